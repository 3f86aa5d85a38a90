"""seqgen: one GPT-2-style decoder for text, translation, summarization and music."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

# Public names, imported on first use so that `seqgen --help` does not load torch.
_EXPORTS = {
    "GPT": "seqgen.model",
    "ModelConfig": "seqgen.config",
    "TrainConfig": "seqgen.config",
    "Checkpoint": "seqgen.checkpoint",
    "load": "seqgen.inference",
    "Generator": "seqgen.inference",
    "stream": "seqgen.generation.engine",
    "save_model": "seqgen.checkpoint",
    "generate": "seqgen.generation.engine",
    "Tokenizer": "seqgen.tokenizer",
    "SentencePieceTokenizer": "seqgen.tokenizer",
    "load_tokenizer": "seqgen.tokenizer",
    "SeqgenError": "seqgen.errors",
    "ConfigError": "seqgen.errors",
    "DataError": "seqgen.errors",
    "CheckpointError": "seqgen.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'seqgen' has no attribute {name!r}")
