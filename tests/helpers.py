"""Helpers shared by the tests (pytest puts this folder on sys.path)."""

from pathlib import Path

import pretty_midi
import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_file(*parts: str) -> Path:
    """A file of ../shared/data (the real datasets beside the repository); the test skips
    where it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent")
    return path


def flags(values: dict) -> list[str]:
    """{"model.n_layer": 1} -> ["--model.n_layer", "1"]"""
    return [item for key, value in values.items() for item in (f"--{key}", str(value))]


TINY_MODEL = {
    "model.n_layer": 1,
    "model.n_head": 2,
    "model.n_embd": 32,
    "model.block_size": 32,
    "tokenizer.vocab_size": 320,
}

# A toy language pair: word-for-word translation through a fixed dictionary.
LEXICON = {
    "the": "der",
    "king": "koenig",
    "queen": "koenigin",
    "rides": "reitet",
    "walks": "geht",
    "sings": "singt",
    "old": "alte",
    "young": "junge",
    "brave": "tapfere",
    "quiet": "stille",
    "castle": "burg",
    "river": "fluss",
    "garden": "garten",
    "to": "zum",
    "friend": "freund",
}


def make_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """n (english, toy-german) sentence pairs, deterministic for a seed."""
    import random

    rng = random.Random(seed)
    words = sorted(LEXICON)
    pairs = []
    for _ in range(n):
        sentence = [rng.choice(words) for _ in range(rng.randint(3, 6))]
        english = " ".join(sentence).capitalize() + "."
        german = " ".join(LEXICON[w] for w in sentence).capitalize() + "."
        pairs.append((english, german))
    return pairs


def write_parallel(directory, name: str, pairs, src: str = "en", tgt: str = "de"):
    """Aligned files directory/name.src and directory/name.tgt; returns the prefix path."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.{src}").write_text("".join(s + "\n" for s, _ in pairs))
    (directory / f"{name}.{tgt}").write_text("".join(t + "\n" for _, t in pairs))
    return directory / name


def write_song(path, shift: int, notes: int = 48) -> None:
    """Arpeggios with a held bass note, velocities changing: a small but musical file."""
    midi = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(0)
    for n in range(notes):
        start = n * 0.25
        pitch = [60, 64, 67, 72][n % 4] + shift
        piano.notes.append(pretty_midi.Note(60 + 20 * (n % 3), pitch, start, start + 0.2))
        if n % 8 == 0:
            piano.notes.append(pretty_midi.Note(70, 36 + shift, start, start + 1.9))
    midi.instruments.append(piano)
    path.parent.mkdir(parents=True, exist_ok=True)
    midi.write(str(path))


def first_new_at(sequence, index):
    """A token whose first occurrence in `sequence` is at `index` or later, and where."""
    for i in range(index, len(sequence)):
        if sequence[i] not in sequence[:i]:
            return sequence[i], i
    raise AssertionError(f"no new token from index {index} in {sequence}")


def next_logits(model, ids):
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids[-model.config.block_size :]]))[0, -1]


def reference_greedy(model, prompt, n, keep=None):
    """Full recompute each step, with the same sliding-window policy as the engine."""
    block = model.config.block_size
    keep = keep or block - block // 4
    ids, start = list(prompt), max(0, len(prompt) - block)
    if len(prompt) > block:
        start = len(prompt) - keep
    out = []
    for _ in range(n):
        if len(ids) - start > block:
            start = len(ids) - keep
        token = next_logits(model, ids[start:]).argmax().item()
        out.append(token)
        ids.append(token)
    return out
