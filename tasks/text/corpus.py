"""Text corpora: read local files or a Hugging Face dataset, tokenize once (cached), pack.

Documents are joined into one token stream with an eos id after each document.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seqgen.data import (
    is_saved_dataset,
    load_hf_dataset,
    missing_local_path,
    read_jsonl,
    read_text_file,
)
from seqgen.errors import DataError
from seqgen.files import atomic_file, cache_dir
from seqgen.progress import Progress
from seqgen.tokenizer import Tokenizer

TEXT_SUFFIXES = {".txt", ".text", ".tokens", ".md", ".raw"}
JSONL_SUFFIXES = {".jsonl"}
CHUNK_CHARS = 1 << 20  # tokenize long documents in ~1 MB pieces cut at newlines
# Part of every token cache key: raise it when the same text would tokenize into other ids.
TOKENS_VERSION = 2


@dataclass
class TextData:
    """Training text: local .txt/.jsonl files, a directory of them, or a Hugging Face dataset."""

    source: str | None = None
    """A .txt or .jsonl file, a directory (searched recursively), a `save_to_disk` dataset
    directory, or a Hugging Face dataset name (via `datasets`; offline from its cache)."""
    val_source: str | None = None
    """Separate validation text (same forms as `source`); if unset, `val_fraction` is held out."""
    val_fraction: float = 0.1
    """Fraction of the text held out for validation: the end of the corpus, cut at a line
    (`seqgen data prepare`: that fraction of the documents, chosen by a hash of where they
    are)."""
    text_field: str = "text"
    """Field holding the text in .jsonl rows and Hugging Face datasets."""
    hf_config: str | None = None
    """Hugging Face dataset configuration name (e.g. wikitext-2-raw-v1)."""
    train_split: str = "train"
    """Hugging Face split to train on."""
    val_split: str | None = None
    """Hugging Face split to validate on (e.g. validation); if unset, `val_fraction` is used."""
    streaming: bool = False
    """Read a Hugging Face dataset as a stream, rows tokenized as they arrive, instead of
    downloading it whole first (`seqgen data prepare` only)."""


def read_documents(source: str, config: TextData, split: str) -> tuple[list[str], str]:
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
    elif missing_local_path(source, TEXT_SUFFIXES | JSONL_SUFFIXES):
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


def _read_hf(source: str, config: TextData, split: str) -> tuple[list[str], str]:
    dataset = load_hf_dataset(source, config.hf_config, split)
    if config.text_field not in dataset.column_names:
        raise DataError(
            f"{source} [{split}]: no column {config.text_field!r} "
            f"(has: {', '.join(dataset.column_names)}); set data.text_field"
        )
    return list(dataset[config.text_field]), f"hf:{dataset._fingerprint}"


def load_text_splits(config: TextData) -> tuple[list[str], list[str], str]:
    """Train documents, validation documents, and a fingerprint of both."""
    if not config.source:
        raise DataError("no training data: set data.source (a file, directory or dataset name)")
    if config.streaming:
        raise DataError(
            "data.streaming: a stream is tokenized into shards first, with `seqgen "
            "data prepare --data.streaming true ... --out DIR`; then train with "
            "--data.source DIR"
        )
    docs, fingerprint = read_documents(config.source, config, config.train_split)
    if not any(d.strip() for d in docs):
        raise DataError(f"{config.source}: the corpus is empty")
    if config.val_source or config.val_split:
        val_docs, val_fingerprint = read_documents(
            config.val_source or config.source, config, config.val_split or config.train_split
        )
        if not any(d.strip() for d in val_docs):
            raise DataError(f"{config.val_source or config.source}: the validation text is empty")
        return (
            docs,
            val_docs,
            _hash([TOKENS_VERSION, config.text_field, fingerprint, val_fingerprint]),
        )
    train_docs, val_docs = split_tail(docs, config.val_fraction)
    return (
        train_docs,
        val_docs,
        _hash([TOKENS_VERSION, config.text_field, fingerprint, config.val_fraction]),
    )


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


def tokenize_documents(docs: list[str], tokenizer: Tokenizer) -> np.ndarray:
    """One stream: each document's ids followed by eos."""
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.int32
    progress = Progress("tokenized", sum(len(doc) for doc in docs), "characters")
    parts = [np.asarray(ids, dtype=dtype) for ids in _encode_stream(docs, tokenizer, progress)]
    progress.finish()
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def _encode_stream(
    docs: list[str], tokenizer: Tokenizer, progress: Progress
) -> Iterator[list[int]]:
    for doc in docs:
        if doc.strip():
            yield from encode_document(doc, tokenizer)
            yield [tokenizer.eos_id]
        progress(len(doc))


def encode_document(text: str, tokenizer: Tokenizer) -> Iterator[list[int]]:
    """The ids of `text`, encoded in pieces of about CHUNK_CHARS cut after a newline: no
    piece spans a newline, so the ids are those of the whole text."""
    start = 0
    while start < len(text):
        end = (
            len(text)
            if len(text) - start <= CHUNK_CHARS
            else text.rfind("\n", start, start + CHUNK_CHARS) + 1
        )
        if end <= start:
            end = start + CHUNK_CHARS
        yield tokenizer.encode(text[start:end])
        start = end


def cached_tokens(docs: list[str], tokenizer: Tokenizer, key: str) -> np.ndarray:
    """`tokenize_documents`, memoised on disk under `key` (written atomically) in the cache
    (`seqgen.files.cache_dir`)."""
    path = cache_dir("data") / f"{key}.npy"
    if path.is_file():
        try:
            return np.load(path, mmap_mode="r")
        except (ValueError, OSError):
            path.unlink(missing_ok=True)  # a damaged cache entry is rebuilt, not trusted
    ids = tokenize_documents(docs, tokenizer)
    with atomic_file(path) as partial, partial.open("wb") as out:
        np.save(out, ids)
    return ids


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save(Path(tmp))
        return _hash([(p.name, p.read_bytes().hex()) for p in sorted(Path(tmp).iterdir())])


def _hash(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:24]
