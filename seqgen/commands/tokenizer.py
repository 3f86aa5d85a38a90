"""Train a task's tokenizer on its training data (`seqgen tokenizer train`), to share one
between runs (`--tokenizer.path DIR`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seqgen.checkpoint import CONFIG_FILE
from seqgen.errors import ConfigError
from seqgen.registry import task_class
from seqgen.tasks import ExampleTask, SamplesText, Splits
from seqgen.tokenizer import SentencePieceTokenizer, Tokenizer, TokenizerConfig


@dataclass
class TokenizerTrainConfig:
    """Train a tokenizer on a task's training data (text: a corpus) and save it to a directory.
    The task's data options are the `data.*` keys."""

    task: str = "text"
    """The task whose training data the tokenizer learns from."""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: Any = None
    """The task's data options (its `data_config` dataclass)."""
    out: str = "tokenizer"
    """Directory to write the tokenizer to (pass it as tokenizer.path)."""


def run(cfg: TokenizerTrainConfig) -> Tokenizer:
    if (Path(cfg.out) / CONFIG_FILE).is_file():
        raise ConfigError(
            f"{cfg.out} is a checkpoint: a new tokenizer there would not match "
            "its model; write it to another --out"
        )
    task = task_class(cfg.task)(cfg.data)
    if isinstance(task, SamplesText):  # a bounded sample, streamed: never the whole corpus
        tokenizer = SentencePieceTokenizer.train(
            task.tokenizer_sample(cfg.tokenizer.max_sentences), cfg.tokenizer
        )
        tokenizer.save(Path(cfg.out))
        return tokenizer
    # the training split only: a task of examples need not name validation data for this
    splits = Splits(task.load_split("train"), []) if isinstance(task, ExampleTask) else task.load()
    tokenizer = task.build_tokenizer(splits, cfg.tokenizer)
    tokenizer.save(Path(cfg.out))
    return tokenizer
