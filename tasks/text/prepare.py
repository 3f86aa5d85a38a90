"""`seqgen data prepare`: a text corpus of any size tokenized once into token shards
(`seqgen.shards`), on every core, for `seqgen pretrain --data.source DIR`. How the corpus is
cut into work units and how a unit is read: `seqgen_tasks.text.units`."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from seqgen.errors import ConfigError, DataError
from seqgen.shard_writer import (
    SHARD_TOKENS,
    default_num_proc,
    finished,
    remove_if_stale,
    write_shards,
)
from seqgen.shards import TOKENIZER_DIR, ids_dtype, is_prepared
from seqgen.tokenizer import Tokenizer, TokenizerConfig, load_tokenizer
from seqgen_tasks.text.corpus import TextData, tokenizer_fingerprint
from seqgen_tasks.text.units import Corpus, Unit, encode_unit, plan, start_worker, unit_documents

log = logging.getLogger("seqgen")


@dataclass
class PrepareConfig:
    """Tokenize a text corpus once into a folder of token shards, on every core, for
    `seqgen pretrain --data.source DIR`. Memory does not grow with the corpus; killed, the
    same command goes on where it stopped; the same corpus gives the same bytes for any
    --num_proc. The `data.*` options name the corpus and its validation split."""

    out: str
    """The folder of shards to write."""
    data: TextData = field(default_factory=TextData)
    """The corpus: data.source, and data.val_source, data.val_split or data.val_fraction."""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    """tokenizer.path: the tokenizer to use (a tokenizer or checkpoint directory); without
    it one is trained on a bounded sample of the corpus (tokenizer.max_sentences lines)."""
    num_proc: int | None = None
    """Processes that tokenize (default: every core this process may use)."""
    shard_tokens: int = SHARD_TOKENS
    """Token ids per shard file."""
    skip_errors: bool = False
    """Skip JSONL rows that are not JSON or have no text field, and text that is not UTF-8,
    counting them in the index, instead of stopping at the first with its file and offset."""
    overwrite: bool = False
    """Delete a folder prepared from other data or settings, instead of refusing it."""

    def __post_init__(self) -> None:
        if self.num_proc is not None and self.num_proc < 1:
            raise ConfigError(f"num_proc must be >= 1, got {self.num_proc}")
        if self.shard_tokens < 1:
            raise ConfigError(f"shard_tokens must be >= 1, got {self.shard_tokens}")
        if not self.data.source:
            raise ConfigError("set data.source: a file, a folder or a dataset to prepare")


def prepare(config: PrepareConfig) -> dict[str, Any]:
    """Write the shards of `config.data` into `config.out`; returns the index."""
    out = Path(config.out).expanduser()
    corpus, units, identity = plan(config.data, config.skip_errors)
    if not isinstance(units, list) and not config.tokenizer.path:  # a stream is read once
        sample_corpus, sample_units, _ = plan(config.data, config.skip_errors)
        tokenizer = _tokenizer(config, sample_corpus, sample_units, out)
    else:
        tokenizer = _tokenizer(config, corpus, units, out)
    identity.update(tokenizer=tokenizer_fingerprint(tokenizer), shard_tokens=config.shard_tokens)
    if config.overwrite:
        remove_if_stale(out, identity)
    finished(out, identity)  # refuses a folder made from other data before touching it
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(out / TOKENIZER_DIR)
    num_proc = config.num_proc or default_num_proc()
    counted = isinstance(units, list)  # a stream's length is unknown
    log.info(
        "preparing %s: %s in %d process%s",
        config.data.source,
        f"{len(units):,} units" if counted else "a stream",
        num_proc,
        "es" if num_proc > 1 else "",
    )
    index = write_shards(
        out,
        units,
        encode_unit,
        identity=identity,
        eos_id=tokenizer.eos_id,
        dtype=ids_dtype(tokenizer.vocab_size),
        shard_tokens=config.shard_tokens,
        num_proc=num_proc,
        initializer=start_worker,
        initargs=(corpus, str(out / TOKENIZER_DIR)),
        size_of=lambda unit: unit.size,
        total=sum(u.size for u in units) if counted else None,
        measure=corpus.measure,
    )
    if not index["splits"]["train"]["tokens"]:
        raise DataError(f"{config.data.source}: the corpus is empty")
    if not index["splits"]["val"]["tokens"]:
        raise DataError(
            f"{config.data.source}: no document fell in the validation split "
            f"(data.val_fraction {config.data.val_fraction}); raise it, or give "
            "data.val_source or data.val_split"
        )
    return index


def _tokenizer(
    config: PrepareConfig, corpus: Corpus, units: Iterable[Unit], out: Path
) -> Tokenizer:
    """The tokenizer of tokenizer.path; else the one `out` was started with (a killed run goes
    on with it), unless --overwrite; else one trained on a sample of the training units."""
    if config.tokenizer.path:
        return load_tokenizer(config.tokenizer.path)
    if not config.overwrite and is_prepared(out) and (out / TOKENIZER_DIR).is_dir():
        log.info("using the tokenizer %s was started with", out)
        return load_tokenizer(out / TOKENIZER_DIR)
    from seqgen.tokenizer import SentencePieceTokenizer

    return SentencePieceTokenizer.train(
        sample_texts(corpus, units, config.tokenizer.max_sentences), config.tokenizer
    )


def sample_texts(corpus: Corpus, units: Iterable[Unit], max_lines: int) -> Iterator[str]:
    """Training text from units spread over the corpus (a fixed random order of them; a
    stream's from its start), until `max_lines` lines: a bounded sample, never the whole
    corpus."""
    if isinstance(units, list):
        units = [units[i] for i in np.random.default_rng(0).permutation(len(units))]
    lines = 0
    for unit in units:
        if unit.split == "val":
            continue
        for split, text, _ in unit_documents(corpus, unit):
            if split == "train":
                yield text
                lines += text.count("\n") + (not text.endswith("\n"))
            if lines >= max_lines:
                return
