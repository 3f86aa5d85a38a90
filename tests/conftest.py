"""Shared fixtures. Tests never touch the network or the user's cache."""

from __future__ import annotations

import os
import random

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("SEQGEN_LOG", "WARNING")

WORDS = (
    "the king queen crown sword castle river night morning speaks walks rides gold silver old "
    "young brave quiet storm garden letter friend enemy honour song"
).split()


def make_corpus(n_lines: int = 600, seed: int = 0) -> str:
    """Deterministic verse-like text: enough structure for a tiny model to learn."""
    rng = random.Random(seed)
    lines = []
    for i in range(n_lines):
        if i % 8 == 0:
            lines.append(f"{rng.choice(WORDS).upper()}:")
        lines.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))) + ".")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def corpus_text() -> str:
    return make_corpus()


@pytest.fixture
def corpus_file(tmp_path, corpus_text):
    path = tmp_path / "corpus.txt"
    path.write_text(corpus_text)
    return path


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Caches go to the test's own directory (tmp_path / "cache"), never ~/.cache."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SEQGEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))


@pytest.fixture(scope="session")
def sp_tokenizer():
    from seqgen.tokenizer import SentencePieceTokenizer, TokenizerConfig

    return SentencePieceTokenizer.train([make_corpus()], TokenizerConfig(vocab_size=320))


@pytest.fixture(scope="session")
def text_ckpt(tmp_path_factory, sp_tokenizer):
    """A text checkpoint of a random 2-layer model whose greedy outputs vary (its logits
    are spread: no near ties), saved at step 7 after 900 tokens."""
    import torch

    from seqgen import checkpoint
    from seqgen.config import ModelConfig
    from seqgen.model import GPT

    torch.manual_seed(0)
    model = GPT(
        ModelConfig(
            vocab_size=sp_tokenizer.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32
        )
    )
    with torch.no_grad():
        model.transformer.wte.weight.mul_(20)
    path = tmp_path_factory.mktemp("ck") / "text"
    return checkpoint.save_model(path, model, sp_tokenizer, "text", step=7, train_tokens=900)


SUCCESSOR = {0: 1, **{t: t + 1 for t in range(1, 9)}, 9: 1}  # cycle 1..9
SUCCESSOR |= {t: t + 1 for t in range(10, 24)} | {24: 10}  # cycle 10..24
SUCCESSOR |= {t: t + 1 for t in range(25, 39)} | {39: 25}  # cycle 25..39


@pytest.fixture(scope="session")
def model():
    """A tiny GPT trained to follow SUCCESSOR, so its greedy outputs are varied and known (the
    generation tests' model)."""
    import torch

    from seqgen.config import ModelConfig
    from seqgen.model import GPT

    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=40, block_size=12, n_layer=2, n_head=2, n_embd=32))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        starts = torch.randint(0, 40, (32,)).tolist()
        rows = []
        for token in starts:
            row = [token]
            while len(row) < 13:
                row.append(SUCCESSOR[row[-1]])
            rows.append(row)
        batch = torch.tensor(rows)
        loss = torch.nn.functional.cross_entropy(
            model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten()
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()
