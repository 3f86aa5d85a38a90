"""Text language modelling: documents packed into one stream, separated by an end-of-text
id, trained on windows of the context; sampled from a text prompt."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seqgen.data import RandomWindows, SequentialWindows
from seqgen.errors import DataError
from seqgen.shards import TOKENIZER_DIR, ShardedTokens, is_prepared, read_index, split_tokens
from seqgen.tasks import (
    BuildsDatasets,
    DatasetBuilder,
    Evaluates,
    SamplesText,
    Splits,
    Task,
    Windows,
)
from seqgen.tokenizer import SentencePieceTokenizer, Tokenizer, TokenizerConfig, load_tokenizer
from seqgen_tasks.text import evaluate as evaluation
from seqgen_tasks.text import sources
from seqgen_tasks.text.corpus import (
    TextData,
    cached_tokens,
    load_text_splits,
    tokenize_documents,
    tokenizer_fingerprint,
)
from seqgen_tasks.text.prepare import PrepareConfig, prepare, sample_texts
from seqgen_tasks.text.units import plan


class TextTask(Task, Evaluates, BuildsDatasets, SamplesText):
    """Trains on a corpus read into memory (tokenized once, cached), or on a folder of
    token shards that `seqgen data prepare` made, through memory maps."""

    name = "text"
    data_config = TextData
    continues_prompt = True
    eval_config = evaluation.TextEval
    evaluate = staticmethod(evaluation.evaluate)
    data_builders = {"prepare": DatasetBuilder(PrepareConfig, prepare)}
    datasets = sources.DATASETS

    def generation_defaults(self) -> dict[str, Any]:
        return {"temperature": 0.8, "max_new_tokens": 200}

    @property
    def prepared(self) -> bool:
        """Whether data.source is a folder of token shards."""
        return bool(self.data.source) and is_prepared(self.data.source)

    def load(self) -> Splits:
        if self.prepared:
            if self.data.val_source or self.data.val_split:
                raise DataError(
                    f"{self.data.source} holds its own validation split (chosen "
                    "when it was prepared): leave data.val_source and "
                    "data.val_split unset"
                )
            train, val = prepared_splits(self.data.source)
            self.stats.update(train_documents=len(train), val_documents=len(val))
            return Splits(train, val)
        train, val, fingerprint = load_text_splits(self.data)
        self.stats.update(train_documents=len(train), val_documents=len(val))
        return Splits(train, val, fingerprint)

    def tokenizer_sample(self, max_lines: int) -> Iterable[str]:
        if self.prepared:
            raise DataError(
                f"{self.data.source} is prepared already: its tokenizer is in "
                f"{Path(self.data.source) / TOKENIZER_DIR}"
            )
        corpus, units, _ = plan(self.data)
        return sample_texts(corpus, units, max_lines)

    def build_tokenizer(self, splits: Splits, config: TokenizerConfig) -> Tokenizer:
        if isinstance(splits.train, PreparedSplit):
            return load_tokenizer(Path(self.data.source).expanduser() / TOKENIZER_DIR)
        return SentencePieceTokenizer.train(splits.train, config)

    def training_data(self, splits: Splits, tokenizer: Tokenizer) -> Windows:
        """Random windows of the training stream; the validation stream in consecutive ones."""
        if isinstance(splits.train, PreparedSplit):
            check_tokenizer(splits.train, tokenizer)
            train, val = splits.train.tokens, splits.val.tokens
        else:
            train = self._tokens(splits.train, "train", tokenizer, splits.fingerprint)
            val = self._tokens(splits.val, "val", tokenizer, splits.fingerprint)
        if len(train) < self.block_size + 1:
            raise DataError(
                f"the training corpus has {len(train)} tokens, fewer than one block "
                f"({self.block_size} + 1); add text or lower model.block_size"
            )
        if len(val) < 2:
            raise DataError(f"the validation text has {len(val)} tokens; it needs at least 2")
        self.stats.update(train_corpus_tokens=len(train), val_corpus_tokens=len(val))
        return Windows(
            RandomWindows(train, self.block_size),
            SequentialWindows(val, self.block_size, tokenizer.pad_id),
        )

    def _tokens(
        self, docs: list[str], split: str, tokenizer: Tokenizer, fingerprint: str | None
    ) -> np.ndarray:
        """The documents' token stream, cached on disk when the corpus has a fingerprint."""
        if fingerprint is None:
            return tokenize_documents(docs, tokenizer)
        key = f"{tokenizer_fingerprint(tokenizer)}{fingerprint}-{split}"
        return cached_tokens(docs, tokenizer, key)

    def prompt(self, source: str, tokenizer: Tokenizer) -> list[int]:
        # The corpus separates documents with eos, so eos is "the start of a document".
        return [tokenizer.eos_id, *tokenizer.encode(source)]

    def decode(self, ids: list[int], tokenizer: Tokenizer) -> str:
        return tokenizer.decode(ids)


@dataclass
class PreparedSplit:
    """A split of a prepared folder: its ids, and its number of documents as its length."""

    directory: Path
    tokens: ShardedTokens
    documents: int
    tokenizer: str
    """The fingerprint of the tokenizer the ids come from."""

    def __len__(self) -> int:
        return self.documents


def prepared_splits(directory: str) -> tuple[PreparedSplit, PreparedSplit]:
    """The train and val splits of a folder that `seqgen data prepare` finished."""
    path = Path(directory).expanduser()
    index = read_index(path)
    train, val = (
        PreparedSplit(
            path,
            split_tokens(path, split, index),
            index["splits"][split]["documents"],
            index["identity"]["tokenizer"],
        )
        for split in ("train", "val")
    )
    return train, val


def check_tokenizer(split: PreparedSplit, tokenizer: Tokenizer) -> None:
    """The run's tokenizer is the one the folder's ids come from."""
    found = tokenizer_fingerprint(tokenizer)
    if found != split.tokenizer:
        raise DataError(
            f"{split.directory} was prepared with tokenizer {split.tokenizer} (in "
            f"{split.directory / TOKENIZER_DIR}), this run's is {found}: train with "
            "the folder's (leave tokenizer.path unset) or prepare the corpus again "
            "with this one"
        )
