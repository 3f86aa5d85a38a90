"""Text corpora: read local files or a Hugging Face dataset, tokenize once (cached), pack.

Documents are joined into one token stream with an eos id after each document; training
samples windows of block_size + 1 tokens at random offsets, validation walks the stream in
non-overlapping windows so every validation token is scored exactly once.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from seqgen.errors import DataError
from seqgen.tokenizer import Tokenizer

TEXT_SUFFIXES = {".txt", ".text", ".tokens", ".md", ".raw"}
JSONL_SUFFIXES = {".jsonl"}
IGNORE_INDEX = -100  # targets with this value carry no loss
CHUNK_CHARS = 1 << 20  # tokenize long documents in ~1 MB pieces cut at newlines


@dataclass
class DataConfig:
    """Training text: local .txt/.jsonl files, a directory of them, or a Hugging Face dataset."""

    source: str | None = None
    """A .txt or .jsonl file, a directory (searched recursively), a `save_to_disk` dataset
    directory, or a Hugging Face dataset name (via `datasets`; offline from its cache)."""
    val_source: str | None = None
    """Separate validation text (same forms as `source`); if unset, `val_fraction` is held out."""
    val_fraction: float = 0.1
    """Fraction of the text held out for validation (the end of the corpus, cut at a line)."""
    text_field: str = "text"
    """Field holding the text in .jsonl rows and Hugging Face datasets."""
    hf_config: str | None = None
    """Hugging Face dataset configuration name (e.g. wikitext-2-raw-v1)."""
    train_split: str = "train"
    """Hugging Face split to train on."""
    val_split: str | None = None
    """Hugging Face split to validate on (e.g. validation); if unset, `val_fraction` is used."""
    cache_dir: str | None = None
    """Where tokenized corpora are cached (default: ~/.cache/seqgen/data)."""
    num_workers: int = 0
    """DataLoader worker processes."""


# ---------------------------------------------------------------- reading


def read_documents(source: str, config: DataConfig, split: str) -> tuple[list[str], str]:
    """The documents of `source` and a fingerprint that changes when they change."""
    path = Path(source).expanduser()
    if path.is_dir() and is_saved_dataset(path):
        return _read_hf(str(path), config, split)
    if path.is_dir():
        suffixes = TEXT_SUFFIXES | JSONL_SUFFIXES
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in suffixes)
        if not files:
            raise DataError(f"{path}: no text files ({', '.join(sorted(suffixes))})")
    elif path.is_file():
        files = [path]
    elif path.suffix in TEXT_SUFFIXES | JSONL_SUFFIXES or source.startswith((".", "/", "~")):
        raise DataError(f"{path}: no such file")
    else:
        return _read_hf(source, config, split)
    docs: list[str] = []
    for file in files:
        docs.extend(
            _read_jsonl(file, config.text_field)
            if file.suffix in JSONL_SUFFIXES
            else [read_text_file(file)]
        )
    stats = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    return docs, _hash(stats)


def read_text_file(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(
            f"{path}: not UTF-8 text (byte offset {err.start}, line {line}: "
            f"{data[err.start : err.start + 4]!r}); convert it, e.g. iconv -f latin1 -t utf-8"
        ) from None


def read_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    """("file:line", parsed row) for each non-empty line of a JSONL file."""
    # split on newlines only: JSON strings may hold U+2028, which splitlines() would cut at
    for number, line in enumerate(read_text_file(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{number}", json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{number}: invalid JSON ({err.msg})") from None


def _read_jsonl(path: Path, field: str) -> list[str]:
    docs = []
    for where, row in read_jsonl(path):
        if not isinstance(row, dict) or field not in row:
            keys = ", ".join(row) if isinstance(row, dict) else type(row).__name__
            raise DataError(f"{where}: no field {field!r} (has: {keys}); set data.text_field")
        if not isinstance(row[field], str):
            raise DataError(f"{where}: field {field!r} is not a string")
        docs.append(row[field])
    return docs


def is_saved_dataset(path: Path) -> bool:
    """Whether `path` is a folder written by `datasets` save_to_disk."""
    return (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()


def load_hf_dataset(source: str, hf_config: str | None, split: str):
    """One split of a `save_to_disk` directory or a Hugging Face dataset (offline: from the
    local cache), with errors that say which and why."""
    import datasets

    try:
        if Path(source).expanduser().is_dir():
            loaded = datasets.load_from_disk(str(Path(source).expanduser()))
            return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
        return datasets.load_dataset(source, hf_config, split=split)
    except KeyError:
        raise DataError(f"{source}: no split {split!r}") from None
    except Exception as err:  # datasets raises many types; all mean "could not load"
        first_line = str(err).splitlines()[0] if str(err) else ""
        raise DataError(
            f"{source}: not a local file, and loading it as a Hugging Face dataset failed "
            f"({type(err).__name__}: {first_line}). Offline, a hub dataset loads only from "
            "the local cache."
        ) from None


def _read_hf(source: str, config: DataConfig, split: str) -> tuple[list[str], str]:
    dataset = load_hf_dataset(source, config.hf_config, split)
    if config.text_field not in dataset.column_names:
        raise DataError(
            f"{source} [{split}]: no column {config.text_field!r} "
            f"(has: {', '.join(dataset.column_names)}); set data.text_field"
        )
    return list(dataset[config.text_field]), f"hf:{dataset._fingerprint}"


def load_text_splits(config: DataConfig) -> tuple[list[str], list[str], str]:
    """Train documents, validation documents, and a fingerprint of both."""
    if not config.source:
        raise DataError("no training data: set data.source (a file, directory or dataset name)")
    docs, fingerprint = read_documents(config.source, config, config.train_split)
    if not any(d.strip() for d in docs):
        raise DataError(f"{config.source}: the corpus is empty")
    if config.val_source or config.val_split:
        val_docs, val_fingerprint = read_documents(
            config.val_source or config.source, config, config.val_split or config.train_split
        )
        if not any(d.strip() for d in val_docs):
            raise DataError(f"{config.val_source or config.source}: the validation text is empty")
        return docs, val_docs, _hash([fingerprint, val_fingerprint])
    train_docs, val_docs = split_tail(docs, config.val_fraction)
    return train_docs, val_docs, _hash([fingerprint, config.val_fraction])


def split_tail(docs: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """Hold out the last `fraction` of the characters, cut at a line boundary."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"data.val_fraction must be in (0, 1), got {fraction}")
    total = sum(len(d) for d in docs)
    cut = int(total * (1.0 - fraction))
    seen = 0
    for i, doc in enumerate(docs):
        if seen + len(doc) > cut:
            at = doc.rfind("\n", 0, cut - seen) + 1  # start of the line holding the cut
            if at == 0 and i == 0:  # one long first line: cut inside it, not before the corpus
                at = cut
            head, tail = doc[:at], doc[at:]
            return docs[:i] + ([head] if head else []), [tail] + docs[i + 1 :]
        seen += len(doc)
    return docs, []


# ---------------------------------------------------------------- tokenizing


def tokenize_documents(docs: list[str], tokenizer: Tokenizer) -> np.ndarray:
    """One stream: each document's ids followed by eos."""
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.int32
    parts = [np.asarray(ids, dtype=dtype) for ids in _encode_stream(docs, tokenizer)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def _encode_stream(docs: list[str], tokenizer: Tokenizer) -> Iterator[list[int]]:
    for doc in docs:
        if not doc.strip():
            continue
        start = 0
        while start < len(doc):
            # cut after a newline: no piece spans one, so chunking leaves the ids unchanged
            end = (
                len(doc)
                if len(doc) - start <= CHUNK_CHARS
                else doc.rfind("\n", start, start + CHUNK_CHARS) + 1
            )
            if end <= start:
                end = start + CHUNK_CHARS
            yield tokenizer.encode(doc[start:end])
            start = end
        yield [tokenizer.eos_id]


def cached_tokens(
    docs: list[str], tokenizer: Tokenizer, key: str, cache_dir: str | None
) -> np.ndarray:
    """`tokenize_documents`, memoised on disk under `key` (written atomically)."""
    directory = Path(cache_dir or Path.home() / ".cache" / "seqgen" / "data").expanduser()
    path = directory / f"{key}.npy"
    if path.is_file():
        try:
            return np.load(path, mmap_mode="r")
        except (ValueError, OSError):
            path.unlink(missing_ok=True)  # a damaged cache entry is rebuilt, not trusted
    ids = tokenize_documents(docs, tokenizer)
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory, suffix=".tmp", delete=False) as tmp:
        np.save(tmp, ids)
    os.replace(tmp.name, path)
    return ids


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save(Path(tmp))
        return _hash([(p.name, p.read_bytes().hex()) for p in sorted(Path(tmp).iterdir())])


def _hash(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:24]


# ---------------------------------------------------------------- datasets


class RandomWindows(Dataset):
    """Item i: the window of block_size + 1 tokens starting at offset i."""

    def __init__(self, ids: np.ndarray, block_size: int) -> None:
        self.ids, self.block_size = ids, block_size

    def __len__(self) -> int:
        return len(self.ids) - self.block_size

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        window = torch.from_numpy(self.ids[i : i + self.block_size + 1].astype(np.int64))
        return {"input_ids": window[:-1], "targets": window[1:]}


class SequentialWindows(Dataset):
    """Non-overlapping windows; the last one is padded, its padding ignored by the loss."""

    def __init__(self, ids: np.ndarray, block_size: int, pad_id: int) -> None:
        self.ids, self.block_size, self.pad_id = ids, block_size, pad_id

    def __len__(self) -> int:
        return -(-(len(self.ids) - 1) // self.block_size)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        start = i * self.block_size
        return padded_window(self.ids[start : start + self.block_size + 1], self.block_size,
                             self.pad_id)  # fmt: skip


def padded_window(ids: np.ndarray, block_size: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Inputs and targets of up to block_size + 1 ids, padded to block_size; the padding is
    ignored by the loss."""
    window = torch.from_numpy(np.asarray(ids, dtype=np.int64))
    inputs = torch.full((block_size,), pad_id, dtype=torch.long)
    targets = torch.full((block_size,), IGNORE_INDEX, dtype=torch.long)
    inputs[: len(window) - 1] = window[:-1]
    targets[: len(window) - 1] = window[1:]
    return {"input_ids": inputs, "targets": targets}


class WindowDataModule(pl.LightningDataModule):
    """Training windows drawn at random start offsets, and fixed validation windows.

    `train_set[i]` is the window starting at offset i (it has `block_size`, and one item per
    offset); an epoch draws as many windows as fit in the stream side by side. Lightning
    shards the draws across distributed ranks.
    """

    def __init__(self, train_set: Dataset, val_set: Dataset, batch_size: int,
                 num_workers: int = 0) -> None:  # fmt: skip
        super().__init__()
        self.train_set, self.val_set = train_set, val_set
        self.batch_size, self.num_workers = batch_size, num_workers

    @property
    def draws_per_epoch(self) -> int:
        """As many windows as fit in the stream side by side (drawn without replacement)."""
        return max(1, len(self.train_set) // self.train_set.block_size)

    def train_dataloader(self) -> DataLoader:
        sampler = RandomSampler(self.train_set, num_samples=self.draws_per_epoch)
        return DataLoader(
            self.train_set,
            self.batch_size,
            sampler=sampler,
            drop_last=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.val_set, self.batch_size, shuffle=False, num_workers=self.num_workers
        )


class TextDataModule(WindowDataModule):
    """Packed token streams for language modelling; see `prepare_text_corpus`."""

    def __init__(
        self,
        train_ids: np.ndarray,
        val_ids: np.ndarray,
        block_size: int,
        batch_size: int,
        pad_id: int,
        num_workers: int = 0,
    ) -> None:
        if len(train_ids) < block_size + 1:
            raise DataError(
                f"the training corpus has {len(train_ids)} tokens, fewer than one block "
                f"({block_size} + 1); add text or lower model.block_size"
            )
        if len(val_ids) < 2:
            raise DataError(f"the validation text has {len(val_ids)} tokens; it needs at least 2")
        train_set = RandomWindows(train_ids, block_size)
        val_set = SequentialWindows(val_ids, block_size, pad_id)
        super().__init__(train_set, val_set, batch_size, num_workers)
