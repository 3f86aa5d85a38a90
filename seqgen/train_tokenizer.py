"""Train a SentencePiece tokenizer on a corpus (`seqgen tokenizer train`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from seqgen.data import DataConfig, read_documents
from seqgen.errors import DataError
from seqgen.tokenizer import SentencePieceTokenizer, TokenizerConfig


@dataclass
class TokenizerTrainConfig:
    """Train a SentencePiece tokenizer on a corpus and save it to a directory."""

    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    out: str = "tokenizer"
    """Directory to write tokenizer.model and tokenizer.json to (pass it as tokenizer.path)."""


def run(cfg: TokenizerTrainConfig) -> SentencePieceTokenizer:
    if not cfg.data.source:
        raise DataError("no corpus: set --data.source")
    docs, _ = read_documents(cfg.data.source, cfg.data, cfg.data.train_split)
    tokenizer = SentencePieceTokenizer.train(docs, cfg.tokenizer)
    tokenizer.save(Path(cfg.out))
    return tokenizer
