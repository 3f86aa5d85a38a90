"""Decoder-only translation (GPT-1 style): the model reads `<bos> <2xx> source <delim>` and
continues with `target <eos>`; the loss covers the target and eos (plus an optional
auxiliary LM loss over the whole sequence). `<2xx>` names the target language, so one model
can serve several pairs.

Parallel data comes as two aligned files (`train.en` + `train.de`), a JSONL file (language
fields, or a `translation` dict as in WMT datasets), a TSV file (source<TAB>target), or a
Hugging Face dataset (a `save_to_disk` directory or a hub name).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seqgen.data import load_hf_dataset, read_jsonl, read_text_file
from seqgen.errors import DataError
from seqgen.examples import Example
from seqgen.tokenizer import SentencePieceTokenizer, Tokenizer, TokenizerConfig

log = logging.getLogger("seqgen")
DELIMITER = "<delim>"


def language_tag(lang: str) -> str:
    return f"<2{lang}>"


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


class TranslationTask:
    name = "translation"
    data_config = TranslationData
    lm_weight = 0.5  # GPT-1's auxiliary LM weight
    data_builders: dict = {}
    continues_prompt = False
    generation_defaults = {"temperature": 0.0, "num_beams": 4, "max_new_tokens": 100}

    def __init__(self) -> None:
        self.target_lang = "de"
        self.max_source_tokens: int | None = None
        self.stats: dict[str, int] = {}

    # ------------------------------------------------------------ fine-tuning

    def special_tokens(self, data: TranslationData) -> list[str]:
        return [DELIMITER, language_tag(data.target_lang)]

    def options(self, data: TranslationData) -> dict[str, Any]:
        return {"source_lang": data.source_lang, "target_lang": data.target_lang}

    def load(self, data: TranslationData, split: str) -> list[Pair]:
        source = data.train if split == "train" else data.val
        hf_split = data.train_split if split == "train" else data.val_split
        if split == "val" and source is None:
            source = data.train  # a dataset's validation split
            if source is not None and _file_like(source, data):
                raise DataError("set data.val: validation pairs (same forms as data.train)")
        if source is None:
            raise DataError("set data.train: the training pairs (files, .jsonl, .tsv or dataset)")
        pairs, skipped = read_pairs(source, data, hf_split)
        if skipped:
            log.warning("%s: skipped %d pairs with an empty side", source, skipped)
        if split == "train" and data.max_train_pairs is not None:
            pairs = pairs[: data.max_train_pairs]
        if not pairs:
            raise DataError(f"{source}: no {split} pairs")
        for pair in pairs:
            pair["lang"] = data.target_lang
        self.stats[f"{split}_pairs"] = len(pairs)
        self.stats[f"{split}_skipped_empty"] = skipped
        return pairs

    def build_tokenizer(self, pairs: list[Pair], config: TokenizerConfig) -> Tokenizer:
        """One joint SentencePiece model over both languages."""
        texts = ("\n".join(p[side] for p in pairs) for side in ("source", "target"))
        return SentencePieceTokenizer.train(texts, config)

    def encode(self, pair: Pair, tokenizer: Tokenizer, max_len: int) -> Example:
        """`<bos> <2xx> source <delim> target <eos>`, the source cut first when too long."""
        head = [tokenizer.bos_id, tokenizer.special_id(language_tag(pair["lang"]))]
        delim = tokenizer.special_id(DELIMITER)
        source, target = tokenizer.encode(pair["source"]), tokenizer.encode(pair["target"])
        room = max_len - len(head) - 2  # delimiter and eos
        keep_target = min(len(target), max(room // 2, room - len(source)))
        keep_source = min(len(source), room - keep_target)
        cut = len(source) - keep_source + len(target) - keep_target
        prompt = [*head, *source[:keep_source], delim]
        answer = [*target[:keep_target], tokenizer.eos_id]
        return Example(prompt + answer, [0] * len(prompt) + [1] * len(answer), truncated=cut)

    # ------------------------------------------------------------ inference

    def configure(self, options: dict[str, Any], block_size: int) -> None:
        self.target_lang = options.get("target_lang", self.target_lang)
        self.max_source_tokens = block_size // 2  # room for a target as long as the source

    def prompt(self, source: str, tokenizer: Tokenizer) -> list[int]:
        ids = tokenizer.encode(source.strip())
        if self.max_source_tokens is not None:
            ids = ids[: self.max_source_tokens]
        tag = tokenizer.special_id(language_tag(self.target_lang))
        return [tokenizer.bos_id, tag, *ids, tokenizer.special_id(DELIMITER)]

    def decode(self, ids: list[int], tokenizer: Tokenizer) -> str:
        return tokenizer.decode(ids).strip()

    def evaluate(self, argv: list[str]) -> dict[str, Any]:
        from seqgen_tasks.translation.evaluate import main

        return main(argv)

    def mbr_similarity(self) -> Callable[[str, str], float]:
        """Sentence chrF (0 to 100) of a translation against another: unlike sentence BLEU,
        it is rarely 0 for short sentences that share words but no 4-gram, so the samples'
        consensus is well defined. It is the utility MBR decoding maximizes, so MBR gains on
        chrF, not necessarily on BLEU (measured: the README's translation section)."""
        from sacrebleu.metrics import CHRF

        chrf = CHRF()
        return lambda translation, other: chrf.sentence_score(translation, [other]).score


# ---------------------------------------------------------------- reading pairs


def _file_like(source: str, data: TranslationData) -> bool:
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
    if path.is_file() and path.suffix in (".tsv", ".tab"):
        return _tsv(path, data.source_lang, data.target_lang)
    if path.is_file():
        raise DataError(f"{path}: unknown pair format (use .jsonl, .tsv, or aligned "
                        f"{path}.{data.source_lang} / .{data.target_lang} files)")  # fmt: skip
    if source.startswith((".", "/", "~")) and not path.is_dir():
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
        raise DataError(f"misaligned parallel files: {src_file} has {len(sources)} lines, "
                        f"{tgt_file} has {len(targets)}")  # fmt: skip
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
            raise DataError(f"{path}:{number}: expected 2 tab-separated columns "
                            f"({src}, {tgt}), found {len(columns)}")  # fmt: skip
        rows.append((columns[0], columns[1]))
    return _keep(rows)


def _hf(source: str, data: TranslationData, split: str) -> tuple[list[Pair], int]:
    dataset = load_hf_dataset(source, data.hf_config, split)
    rows = [
        _pair_of(row, data.source_lang, data.target_lang, f"{source} [{split}] row {i}")
        for i, row in enumerate(dataset)
    ]
    return _keep(rows)
