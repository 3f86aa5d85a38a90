"""Decoder-only translation (GPT-1 style): the model reads `<bos> <2xx> source <delim>` and
continues with `target <eos>`; the loss covers the target and eos (plus an optional
auxiliary LM loss over the whole sequence). `<2xx>` names the target language, so one model
can serve several pairs. Reading parallel data: `seqgen_tasks.translation.data`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from seqgen.errors import DataError
from seqgen.tasks import BuildsDatasets, Evaluates, ExampleTask, HasMBR, Splits
from seqgen.tokenizer import SentencePieceTokenizer, Tokenizer, TokenizerConfig
from seqgen.training.examples import Example
from seqgen_tasks.translation import evaluate as evaluation
from seqgen_tasks.translation import sources
from seqgen_tasks.translation.data import Pair, TranslationData, file_like, read_pairs

log = logging.getLogger("seqgen")
DELIMITER = "<delim>"


def language_tag(lang: str) -> str:
    return f"<2{lang}>"


class TranslationTask(ExampleTask, Evaluates, HasMBR, BuildsDatasets):
    name = "translation"
    data_config = TranslationData
    stored_options = ("source_lang", "target_lang")
    lm_weight = 0.5  # GPT-1's auxiliary LM weight
    eval_config = evaluation.TranslationEval
    evaluate = staticmethod(evaluation.evaluate)
    datasets = sources.DATASETS

    def generation_defaults(self) -> dict[str, Any]:
        return {"temperature": 0.0, "num_beams": 4, "max_new_tokens": 100}

    # ------------------------------------------------------------ fine-tuning

    def special_tokens(self) -> list[str]:
        return [DELIMITER, language_tag(self.data.target_lang)]

    def load_split(self, split: str) -> list[Pair]:
        data = self.data
        source = data.train if split == "train" else data.val
        hf_split = data.train_split if split == "train" else data.val_split
        if split == "val" and source is None:
            source = data.train  # a dataset's validation split
            if source is not None and file_like(source, data):
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

    def build_tokenizer(self, splits: Splits, config: TokenizerConfig) -> Tokenizer:
        """One joint SentencePiece model over both languages."""
        texts = ("\n".join(p[side] for p in splits.train) for side in ("source", "target"))
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

    def prompt(self, source: str, tokenizer: Tokenizer) -> list[int]:
        # at most half the context: room for a target as long as the source
        ids = tokenizer.encode(source.strip())[: self.block_size // 2]
        tag = tokenizer.special_id(language_tag(self.data.target_lang))
        return [tokenizer.bos_id, tag, *ids, tokenizer.special_id(DELIMITER)]

    def decode(self, ids: list[int], tokenizer: Tokenizer) -> str:
        return tokenizer.decode(ids).strip()

    def segment_starts(self, ids: list[int], tokenizer: Tokenizer) -> list[int]:
        """The source after the language tag, the target after the delimiter."""
        marks = (language_tag(self.data.target_lang), DELIMITER)
        return [i + 1 for i, t in enumerate(ids) if t in {tokenizer.special_id(m) for m in marks}]

    def mbr_similarity(self) -> Callable[[str, str], float]:
        """Sentence chrF (0 to 100) of a translation against another: unlike sentence BLEU,
        it is rarely 0 for short sentences that share words but no 4-gram, so the samples'
        consensus is well defined. It is the utility MBR decoding maximizes, so MBR gains on
        chrF, not necessarily on BLEU (measured: docs/translation.md)."""
        from sacrebleu.metrics import CHRF

        chrf = CHRF()
        return lambda translation, other: chrf.sentence_score(translation, [other]).score
