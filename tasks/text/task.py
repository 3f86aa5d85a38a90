"""Text language modelling: documents packed into one stream, separated by an end-of-text
id, trained on windows of the context; sampled from a text prompt."""

from __future__ import annotations

from typing import Any

import numpy as np

from seqgen.data import RandomWindows, SequentialWindows
from seqgen.errors import DataError
from seqgen.tasks import Evaluates, Splits, Task, Windows
from seqgen.tokenizer import SentencePieceTokenizer, Tokenizer, TokenizerConfig
from seqgen_tasks.text import evaluate as evaluation
from seqgen_tasks.text.corpus import (
    TextData,
    cached_tokens,
    load_text_splits,
    tokenize_documents,
    tokenizer_fingerprint,
)


class TextTask(Task, Evaluates):
    name = "text"
    data_config = TextData
    continues_prompt = True
    eval_config = evaluation.TextEval
    evaluate = staticmethod(evaluation.evaluate)

    def generation_defaults(self) -> dict[str, Any]:
        return {"temperature": 0.8, "max_new_tokens": 200}

    def load(self) -> Splits:
        train, val, fingerprint = load_text_splits(self.data)
        self.stats.update(train_documents=len(train), val_documents=len(val))
        return Splits(train, val, fingerprint)

    def build_tokenizer(self, splits: Splits, config: TokenizerConfig) -> Tokenizer:
        return SentencePieceTokenizer.train(splits.train, config)

    def training_data(self, splits: Splits, tokenizer: Tokenizer) -> Windows:
        """Random windows of the training stream; the validation stream in consecutive ones."""
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
        return Windows(RandomWindows(train, self.block_size),
                       SequentialWindows(val, self.block_size, tokenizer.pad_id),
                       self.data.num_workers)  # fmt: skip

    def _tokens(self, docs: list[str], split: str, tokenizer: Tokenizer,
                fingerprint: str | None) -> np.ndarray:  # fmt: skip
        """The documents' token stream, cached on disk when the corpus has a fingerprint."""
        if fingerprint is None:
            return tokenize_documents(docs, tokenizer)
        key = f"{tokenizer_fingerprint(tokenizer)}{fingerprint}-{split}"
        return cached_tokens(docs, tokenizer, key, self.data.cache_dir)

    def prompt(self, source: str, tokenizer: Tokenizer) -> list[int]:
        # The corpus separates documents with eos, so eos is "the start of a document".
        return [tokenizer.eos_id, *tokenizer.encode(source)]

    def decode(self, ids: list[int], tokenizer: Tokenizer) -> str:
        return tokenizer.decode(ids)
