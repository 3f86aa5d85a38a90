"""Token shards: a corpus tokenized once into fixed-size files of ids, trained on through
memory maps, so that no process ever holds the corpus.

    DIR/index.json              what was prepared (the source and options that made it), the
                                tokenizer's fingerprint, the ids' dtype and eos id, and each
                                split's shards with their token and document counts
    DIR/tokenizer/              the tokenizer the ids come from
    DIR/train/shard-000000.bin  raw ids, `shard_tokens` each (the last one of a split shorter):
    DIR/val/shard-000000.bin    uint16 where the vocabulary fits, else uint32; documents end
                                with the eos id
    DIR/progress.json           while preparing only: where a killed run goes on

This module is the format and its reading; `seqgen.shard_writer` writes it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seqgen.errors import DataError
from seqgen.files import read_json

log = logging.getLogger("seqgen")
FORMAT = "seqgen-shards"
VERSION = 1
INDEX_FILE = "index.json"
PROGRESS_FILE = "progress.json"
TOKENIZER_DIR = "tokenizer"
SPLITS = ("train", "val")


def ids_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def is_prepared(path: str | Path) -> bool:
    """Whether `path` is a folder of token shards (finished or not)."""
    path = Path(path).expanduser()
    return (path / INDEX_FILE).is_file() or (path / PROGRESS_FILE).is_file()


def read_index(directory: str | Path) -> dict[str, Any]:
    """The index of a finished folder of shards, checked against its files."""
    directory = Path(directory).expanduser()
    path = directory / INDEX_FILE
    if not path.is_file():
        if (directory / PROGRESS_FILE).is_file():
            raise DataError(
                f"{directory}: preparing it did not finish; run the same "
                "`seqgen data prepare` command again to complete it"
            )
        raise DataError(f"{directory}: not a folder of token shards (no {INDEX_FILE})")
    index = read_json(path, "shard index")
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise DataError(f"{path}: not a seqgen shard index")
    if index.get("version", 0) > VERSION:
        raise DataError(
            f"{path}: shard format {index['version']} is newer than this seqgen "
            f"reads ({VERSION}); upgrade seqgen"
        )
    return index


class ShardedTokens:
    """The ids of one split, read through memory maps: `len()` and slices `[a:b]` (which may
    span shards) like a 1-D array. It pickles as its file names, so DataLoader workers map the
    files themselves instead of receiving a copy."""

    def __init__(self, files: Sequence[Path], sizes: Sequence[int], dtype: str) -> None:
        self.files, self.sizes, self.dtype = [Path(f) for f in files], list(sizes), np.dtype(dtype)
        for file, size in zip(self.files, self.sizes, strict=True):
            found = file.stat().st_size if file.is_file() else None
            if found != size * self.dtype.itemsize:
                raise DataError(
                    f"{file}: {'missing' if found is None else f'{found:,} bytes'}, "
                    f"the index says {size * self.dtype.itemsize:,}; prepare the "
                    "folder again"
                )
        self.ends = np.cumsum([0, *self.sizes])
        self._maps: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return int(self.ends[-1])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_maps": None}

    def _map(self, i: int) -> np.ndarray:
        if self._maps is None:
            self._maps = [np.memmap(f, dtype=self.dtype, mode="r") for f in self.files]
        return self._maps[i]

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice):
            raise TypeError("ShardedTokens takes slices, e.g. tokens[i : i + n]")
        start, stop, step = key.indices(len(self))
        if step != 1:
            raise ValueError("ShardedTokens slices are contiguous (step 1)")
        if stop <= start:
            return np.zeros(0, dtype=self.dtype)
        first = int(np.searchsorted(self.ends, start, side="right")) - 1
        parts = []
        while start < stop:
            shard_start, shard_end = int(self.ends[first]), int(self.ends[first + 1])
            end = min(stop, shard_end)
            parts.append(self._map(first)[start - shard_start : end - shard_start])
            start, first = end, first + 1
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def split_tokens(
    directory: str | Path, split: str, index: dict[str, Any] | None = None
) -> ShardedTokens:
    """The ids of `split` ("train" or "val") of a finished folder of shards."""
    directory = Path(directory).expanduser()
    index = index or read_index(directory)
    shards = index["splits"][split]["shards"]
    return ShardedTokens(
        [directory / s["file"] for s in shards], [s["tokens"] for s in shards], index["dtype"]
    )
