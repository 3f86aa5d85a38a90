"""A text corpus as work units for `seqgen data prepare`, and a unit read and encoded.

The corpus is cut into work units that do not depend on the number of processes: byte
ranges of UNIT_BYTES of each file (cut after a newline, so no line and no UTF-8 character
is split; a JSONL row is a document, a text file is one document) or ROWS_PER_UNIT rows of a
Hugging Face dataset. Each process reads its units itself, so nothing holds the corpus; a
streamed dataset (`data.streaming`) is read in order by the parent, which hands each unit its
rows.

The validation split is chosen per document by a hash of where it is (its file, relative to
the source, and its row's byte offset or its row number): the same documents whatever the
number of processes, and recorded in the index. A text file, one long document, is chosen
in sections of SECTION_BYTES instead, so that a one-file corpus still has a validation split.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seqgen.data import hashed_share
from seqgen.errors import DataError
from seqgen.shards import ids_dtype, is_prepared
from seqgen.tokenizer import load_tokenizer
from seqgen_tasks.text.corpus import (
    JSONL_SUFFIXES,
    TEXT_SUFFIXES,
    TOKENS_VERSION,
    TextData,
    encode_document,
)

UNIT_BYTES = 1 << 22  # 4 MiB of a file per work unit
SECTION_BYTES = 1 << 14  # a text file's validation split is chosen 16 KiB at a time
ROWS_PER_UNIT = 1024  # rows of a Hugging Face dataset per work unit


@dataclass(frozen=True)
class Unit:
    """A piece of the corpus: bytes [k * UNIT_BYTES, (k + 1) * UNIT_BYTES) of a file, cut
    after newlines, or rows [k * ROWS_PER_UNIT, ...) of a dataset; `split` is where all its
    documents go, or None to choose per document."""

    source: int  # index into the Corpus's sources
    k: int
    size: int  # bytes or rows, for progress
    split: str | None
    rows: tuple[str, ...] | None = None  # a streamed dataset's: the texts themselves


@dataclass
class Corpus:
    """The sources of a corpus and its settings, everything a worker needs to read a unit."""

    sources: list[dict[str, Any]]  # {"file", "name", "jsonl"} or {"dataset", "config", ...}
    text_field: str
    val_fraction: float
    skip_errors: bool

    @property
    def measure(self) -> str:
        """What a unit's size counts: bytes where every source is a file, else rows."""
        return "bytes" if all("file" in source for source in self.sources) else "rows"


def plan(
    data: TextData, skip_errors: bool = False
) -> tuple[Corpus, list[Unit] | Iterator[Unit], dict[str, Any]]:
    """The corpus of `data` as work units (a list; an iterator, read once, where a dataset
    is streamed), and what identifies it (a changed file, field or split setting makes a
    folder prepared before stale)."""
    if data.val_source is None and data.val_split is None and not 0 < data.val_fraction < 1:
        raise DataError(f"data.val_fraction must be in (0, 1), got {data.val_fraction}")
    corpus = Corpus([], data.text_field, data.val_fraction, skip_errors)
    fixed = data.val_source is not None or data.val_split is not None
    units = _units(corpus, data.source, data, data.train_split, "train" if fixed else None)
    if fixed:
        val = _units(
            corpus, data.val_source or data.source, data, data.val_split or data.train_split, "val"
        )
        units = (
            units + val
            if isinstance(units, list) and isinstance(val, list)
            else (itertools.chain(units, val))
        )
    identity = {
        "format": TOKENS_VERSION,
        "units": [UNIT_BYTES, SECTION_BYTES, ROWS_PER_UNIT],
        "sources": [_stamp(s) for s in corpus.sources],
        "text_field": data.text_field,
        "hf_config": data.hf_config,
        "val_fraction": None if fixed else data.val_fraction,
    }
    return corpus, units, identity


def _units(
    corpus: Corpus, source: str, data: TextData, hf_split: str, split: str | None
) -> list[Unit] | Iterator[Unit]:
    from seqgen.data import is_saved_dataset, missing_local_path

    path = Path(source).expanduser()
    if is_prepared(path):
        raise DataError(
            f"{path} is a folder of token shards already: train on it with --data.source"
        )
    if path.is_dir() and not is_saved_dataset(path):
        suffixes = TEXT_SUFFIXES | JSONL_SUFFIXES
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in suffixes)
        if not files:
            raise DataError(f"{path}: no text files ({', '.join(sorted(suffixes))})")
        root = path
    elif path.is_file():
        files, root = [path], path.parent
    elif missing_local_path(source, TEXT_SUFFIXES | JSONL_SUFFIXES):
        raise DataError(f"{path}: no such file")
    elif data.streaming:
        return _stream_units(corpus, source, data, hf_split, split)
    else:
        return _dataset_units(corpus, source, data, hf_split, split)
    units = []
    for file in files:
        corpus.sources.append(
            {
                "file": str(file.resolve()),
                "name": str(file.relative_to(root)),
                "jsonl": file.suffix in JSONL_SUFFIXES,
            }
        )
        size = file.stat().st_size
        units += [
            Unit(len(corpus.sources) - 1, k, min(UNIT_BYTES, size - k * UNIT_BYTES), split)
            for k in range(-(-size // UNIT_BYTES))
        ]
    return units


def _dataset_units(
    corpus: Corpus, source: str, data: TextData, hf_split: str, split: str | None
) -> list[Unit]:
    from seqgen.data import load_hf_dataset

    dataset = load_hf_dataset(source, data.hf_config, hf_split)
    if data.text_field not in dataset.column_names:
        raise DataError(
            f"{source} [{hf_split}]: no column {data.text_field!r} (has: "
            f"{', '.join(dataset.column_names)}); set data.text_field"
        )
    corpus.sources.append(
        {
            "dataset": source,
            "config": data.hf_config,
            "split": hf_split,
            "fingerprint": dataset._fingerprint,
            "rows": len(dataset),
        }
    )
    rows = len(dataset)
    return [
        Unit(len(corpus.sources) - 1, k, min(ROWS_PER_UNIT, rows - k * ROWS_PER_UNIT), split)
        for k in range(-(-rows // ROWS_PER_UNIT))
    ]


def _stream_units(
    corpus: Corpus, source: str, data: TextData, hf_split: str, split: str | None
) -> Iterator[Unit]:
    """Units of ROWS_PER_UNIT rows of a streamed dataset, read as they are asked for; the
    parent reads the stream and hands each unit its texts."""
    from seqgen.data import load_hf_dataset

    local = Path(source).expanduser().is_dir()  # a save_to_disk folder, known by content
    dataset = load_hf_dataset(source, data.hf_config, hf_split, streaming=not local)
    stream = dataset.to_iterable_dataset() if local else dataset
    corpus.sources.append(
        {
            "stream": source,
            "config": data.hf_config,
            "split": hf_split,
            "version": str(getattr(getattr(stream, "info", None), "version", None)),
            "local": dataset._fingerprint if local else None,
        }
    )
    index = len(corpus.sources) - 1

    def units() -> Iterator[Unit]:
        rows: list[str] = []
        for number, row in enumerate(stream):
            text = row.get(data.text_field) if isinstance(row, dict) else None
            if not isinstance(text, str):
                keys = ", ".join(row) if isinstance(row, dict) else type(row).__name__
                raise DataError(
                    f"{source} [{hf_split}] row {number}: no text field "
                    f"{data.text_field!r} (has: {keys}); set data.text_field"
                )
            rows.append(text)
            if len(rows) == ROWS_PER_UNIT:
                yield Unit(index, number // ROWS_PER_UNIT, len(rows), split, tuple(rows))
                rows = []
        if rows:
            yield Unit(index, number // ROWS_PER_UNIT, len(rows), split, tuple(rows))

    return units()


def _stamp(source: dict[str, Any]) -> list[Any]:
    """What changes when a source's content does."""
    if "file" in source:
        stat = Path(source["file"]).stat()
        return [source["name"], stat.st_size, stat.st_mtime_ns]
    if "stream" in source:
        return [
            source["stream"],
            source["config"],
            source["split"],
            "stream",
            source["version"],
            source["local"],
        ]
    return [source["dataset"], source["config"], source["split"], source["fingerprint"]]


# ---------------------------------------------------------------- reading and encoding a unit

_worker: dict[str, Any] = {}  # each process's corpus, tokenizer and open datasets


def start_worker(corpus: Corpus, tokenizer_dir: str) -> None:
    _worker.update(corpus=corpus, tokenizer=load_tokenizer(tokenizer_dir), datasets={})


def encode_unit(unit: Unit) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    corpus, tokenizer = _worker["corpus"], _worker["tokenizer"]
    dtype = ids_dtype(tokenizer.vocab_size)
    ids: dict[str, list[int]] = {"train": [], "val": []}
    counts = {"documents": 0, "characters": 0}
    for split, text, ends in unit_documents(corpus, unit, counts):
        for piece in encode_document(text, tokenizer):
            ids[split] += piece
        if ends:
            ids[split].append(tokenizer.eos_id)
        counts["characters"] += len(text)
    return {split: np.asarray(values, dtype=dtype) for split, values in ids.items()}, counts


def unit_documents(
    corpus: Corpus, unit: Unit, counts: dict[str, int] | None = None
) -> Iterator[tuple[str, str, bool]]:
    """(split, text, whether a document ends there) for each document or section of `unit`."""
    counts = {} if counts is None else counts
    source = corpus.sources[unit.source]
    if unit.rows is not None:
        first = unit.k * ROWS_PER_UNIT
        for row, text in enumerate(unit.rows, start=first):
            counts["documents"] = counts.get("documents", 0) + 1
            yield unit.split or _split_of(corpus, f"row {row}", 0), text, True
        return
    if "dataset" in source:
        yield from _dataset_rows(corpus, source, unit, counts)
        return
    start, end, data = _read_range(Path(source["file"]), unit.k)
    if source["jsonl"]:
        yield from _jsonl_rows(corpus, source, unit, start, data, counts)
        return
    ends_file = end == Path(source["file"]).stat().st_size
    at, section = 0, start // SECTION_BYTES
    while at < len(data):
        cut = _cut(data, (section + 1) * SECTION_BYTES - start)
        text = _decoded(data[at:cut], source, start + at, corpus, counts)
        last = ends_file and cut == len(data)
        if text is not None:
            counts["documents"] = counts.get("documents", 0) + last
            yield unit.split or _split_of(corpus, source["name"], section), text, last
        at, section = cut, section + 1


def _read_range(path: Path, k: int) -> tuple[int, int, bytes]:
    """Bytes [start, end) of unit k of a file: from just after the first newline at or after
    k * UNIT_BYTES - 1 (the file's start for k = 0) to the same point of unit k + 1."""
    nominal = k * UNIT_BYTES
    try:
        with path.open("rb") as handle:
            handle.seek(max(nominal - 1, 0))
            head = handle.read(UNIT_BYTES + 1) if k else b""
            start = nominal
            if k:
                newline = head.find(b"\n")
                if newline < 0:
                    return nominal, nominal, b""  # one line spans this unit: its own is before
                start = nominal - 1 + newline + 1
            handle.seek(start)
            data = handle.read(nominal + UNIT_BYTES - start)
            while data and not data.endswith(b"\n"):  # on to the end of the unit's last line
                more = handle.read(1 << 16)
                if not more:
                    break
                newline = more.find(b"\n")
                data += more if newline < 0 else more[: newline + 1]
                if newline >= 0:
                    break
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None
    return start, start + len(data), data


def _cut(data: bytes, offset: int) -> int:
    """Where a section ends in a unit's bytes: after the first newline at or after offset - 1
    (the unit's end if none)."""
    if offset >= len(data):
        return len(data)
    newline = data.find(b"\n", max(offset - 1, 0))
    return len(data) if newline < 0 else newline + 1


def _decoded(
    data: bytes, source: dict[str, Any], offset: int, corpus: Corpus, counts: dict[str, int]
) -> str | None:
    """`data` as text; None (counted) for text that is not UTF-8 where errors are skipped."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        where = offset + err.start
        if corpus.skip_errors:
            counts["skipped_bytes"] = counts.get("skipped_bytes", 0) + len(data)
            return None
        raise DataError(
            f"{source['file']}: not UTF-8 text (byte offset {where}: "
            f"{data[err.start : err.start + 4]!r}); convert it (e.g. iconv -f "
            "latin1 -t utf-8) or give --skip_errors true"
        ) from None


def _jsonl_rows(
    corpus: Corpus,
    source: dict[str, Any],
    unit: Unit,
    start: int,
    data: bytes,
    counts: dict[str, int],
) -> Iterator[tuple[str, str, bool]]:
    offset = start
    for line in data.split(b"\n"):
        where, offset = offset, offset + len(line) + 1
        if not line.strip():
            continue
        text = _decoded(line, source, where, corpus, counts)
        if text is None:
            continue
        problem = None
        try:
            row = json.loads(text)
        except json.JSONDecodeError as err:
            problem = f"invalid JSON ({err.msg})"
        else:
            if not isinstance(row, dict) or corpus.text_field not in row:
                keys = ", ".join(row) if isinstance(row, dict) else type(row).__name__
                problem = f"no field {corpus.text_field!r} (has: {keys}); set data.text_field"
            elif not isinstance(row[corpus.text_field], str):
                problem = f"field {corpus.text_field!r} is not a string"
        if problem is not None:
            if not corpus.skip_errors:
                raise DataError(
                    f"{source['file']}: the row at byte offset {where}: {problem} "
                    "(--skip_errors true skips such rows)"
                )
            counts["skipped_rows"] = counts.get("skipped_rows", 0) + 1
            continue
        counts["documents"] = counts.get("documents", 0) + 1
        yield unit.split or _split_of(corpus, source["name"], where), row[corpus.text_field], True


def _dataset_rows(
    corpus: Corpus, source: dict[str, Any], unit: Unit, counts: dict[str, int]
) -> Iterator[tuple[str, str, bool]]:
    from seqgen.data import load_hf_dataset

    opened = _worker.setdefault("datasets", {})
    key = (source["dataset"], source["config"], source["split"])
    if key not in opened:
        opened[key] = load_hf_dataset(*key)
    first = unit.k * ROWS_PER_UNIT
    rows = opened[key][first : first + unit.size][corpus.text_field]
    for row, text in enumerate(rows, start=first):
        if not isinstance(text, str):
            raise DataError(
                f"{source['dataset']} [{source['split']}] row {row}: column "
                f"{corpus.text_field!r} is not text"
            )
        counts["documents"] = counts.get("documents", 0) + 1
        yield unit.split or _split_of(corpus, f"row {row}", 0), text, True


def _split_of(corpus: Corpus, name: str, where: int) -> str:
    """ "val" for a val_fraction of documents, chosen by a hash of where they are."""
    return "val" if hashed_share(f"{name}\0{where}") < corpus.val_fraction else "train"
