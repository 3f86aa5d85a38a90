"""Parallel text for translation: two aligned files (`train.en` + `train.de`), a JSONL file
(language fields, or a `translation` dict as in WMT datasets), a TSV file (source<TAB>target),
or a Hugging Face dataset (a `save_to_disk` directory or a hub name)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seqgen.data import load_hf_dataset, missing_local_path, read_jsonl, read_text_file
from seqgen.errors import DataError

PAIR_SUFFIXES = {".jsonl", ".tsv", ".tab"}  # one file of pairs (aligned files end in languages)


@dataclass
class TranslationData:
    """Parallel text for translation."""

    train: str | None = None
    """Training pairs: a path prefix whose `.{source_lang}` and `.{target_lang}` files are
    aligned line by line (data/train -> data/train.en, data/train.de), a .jsonl file, a .tsv
    file (source<TAB>target), a `save_to_disk` directory or a Hugging Face dataset name."""
    val: str | None = None
    """Validation pairs, in the same forms (default for a dataset: its `val_split`)."""
    source_lang: str = "en"
    """Source language code: the file suffix, JSONL field or `translation` key."""
    target_lang: str = "de"
    """Target language code; also names the target tag token (<2de>)."""
    hf_config: str | None = None
    """Hugging Face dataset configuration (e.g. de-en for wmt14)."""
    train_split: str = "train"
    """Hugging Face split to train on."""
    val_split: str = "validation"
    """Hugging Face split to validate on when `val` is not set."""
    max_train_pairs: int | None = None
    """Use at most this many training pairs (the first ones)."""


Pair = dict[str, str]


def file_like(source: str, data: TranslationData) -> bool:
    path = Path(source).expanduser()
    return path.is_file() or Path(f"{path}.{data.source_lang}").is_file()


def read_pairs(source: str, data: TranslationData, hf_split: str) -> tuple[list[Pair], int]:
    """(pairs, number skipped for an empty side) from any of the supported forms."""
    path = Path(source).expanduser()
    src_file = Path(f"{path}.{data.source_lang}")
    tgt_file = Path(f"{path}.{data.target_lang}")
    if src_file.is_file() or tgt_file.is_file():
        return _aligned_files(src_file, tgt_file)
    if path.is_file() and path.suffix == ".jsonl":
        return _jsonl(path, data.source_lang, data.target_lang)
    if path.is_file() and path.suffix in PAIR_SUFFIXES - {".jsonl"}:
        return _tsv(path, data.source_lang, data.target_lang)
    if path.is_file():
        raise DataError(
            f"{path}: unknown pair format (use .jsonl, .tsv, or aligned "
            f"{path}.{data.source_lang} / .{data.target_lang} files)"
        )
    if missing_local_path(source, PAIR_SUFFIXES):
        raise DataError(f"{path}: no such file, and no {src_file.name} / {tgt_file.name} beside it")
    return _hf(source, data, hf_split)


def read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 file, split on newlines only (as aligned corpora are)."""
    text = read_text_file(path)
    lines = text.split("\n")  # not splitlines(): U+2028 and friends must not break alignment
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def _keep(rows: list[tuple[str, str]]) -> tuple[list[Pair], int]:
    pairs = [{"source": s.strip(), "target": t.strip()} for s, t in rows]
    kept = [p for p in pairs if p["source"] and p["target"]]
    return kept, len(pairs) - len(kept)


def _aligned_files(src_file: Path, tgt_file: Path) -> tuple[list[Pair], int]:
    for missing, other in ((src_file, tgt_file), (tgt_file, src_file)):
        if not missing.is_file():
            raise DataError(f"{missing}: no such file (the other side of {other})")
    sources, targets = read_lines(src_file), read_lines(tgt_file)
    if len(sources) != len(targets):
        raise DataError(
            f"misaligned parallel files: {src_file} has {len(sources)} lines, "
            f"{tgt_file} has {len(targets)}"
        )
    return _keep(list(zip(sources, targets, strict=True)))


def _jsonl(path: Path, src: str, tgt: str) -> tuple[list[Pair], int]:
    return _keep([_pair_of(row, src, tgt, where) for where, row in read_jsonl(path)])


def _pair_of(row: Any, src: str, tgt: str, where: str) -> tuple[str, str]:
    if isinstance(row, dict) and isinstance(row.get("translation"), dict):
        row = row["translation"]
    if not isinstance(row, dict) or src not in row or tgt not in row:
        keys = ", ".join(row) if isinstance(row, dict) else type(row).__name__
        raise DataError(
            f"{where}: needs fields {src!r} and {tgt!r} (or a 'translation' "
            f"dict of them); has: {keys}. Set data.source_lang/target_lang"
        )
    if not isinstance(row[src], str) or not isinstance(row[tgt], str):
        raise DataError(f"{where}: fields {src!r} and {tgt!r} must be strings")
    return row[src], row[tgt]


def _tsv(path: Path, src: str, tgt: str) -> tuple[list[Pair], int]:
    rows = []
    for number, line in enumerate(read_lines(path), start=1):
        if number == 1 and line.split("\t") == [src, tgt]:
            continue  # a header naming the languages
        columns = line.split("\t")
        if len(columns) != 2:
            if not line.strip():
                rows.append(("", ""))
                continue
            raise DataError(
                f"{path}:{number}: expected 2 tab-separated columns "
                f"({src}, {tgt}), found {len(columns)}"
            )
        rows.append((columns[0], columns[1]))
    return _keep(rows)


def _hf(source: str, data: TranslationData, split: str) -> tuple[list[Pair], int]:
    dataset = load_hf_dataset(source, data.hf_config, split)
    rows = [
        _pair_of(row, data.source_lang, data.target_lang, f"{source} [{split}] row {i}")
        for i, row in enumerate(dataset)
    ]
    return _keep(rows)
