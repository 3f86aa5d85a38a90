"""Summarization as in "Generating Wikipedia by Summarizing Long Sequences": the model reads
`<bos> body <summarize> title` and writes `lead <eos>`; the loss covers the lead and eos (plus an
optional auxiliary LM loss). Bodies are far longer than the context: the body is cut to the
room the summary leaves, either from its start or, WikiSum's extractive stage, keeping the
paragraphs most similar (tf-idf) to the title, in their original order.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from seqgen.errors import DataError
from seqgen.tasks import BuildsDatasets, DatasetBuilder, Evaluates, ExampleTask, HasMBR, Splits
from seqgen.tokenizer import SentencePieceTokenizer, Tokenizer, TokenizerConfig
from seqgen.training.examples import Example
from seqgen_tasks.summarization import evaluate as evaluation
from seqgen_tasks.summarization import sources, wikisum
from seqgen_tasks.summarization.data import SummarizationData, read_examples

SUMMARIZE = "<summarize>"
MAX_HEADING_TOKENS = 32
WORD = re.compile(r"\w+")


class SummarizationTask(ExampleTask, Evaluates, HasMBR, BuildsDatasets):
    name = "summarization"
    data_config = SummarizationData
    stored_options = (
        "document_field",
        "summary_field",
        "title_field",
        "id_field",
        "max_summary_tokens",
        "body_selection",
        "title_heading",
    )
    option_defaults: ClassVar[dict[str, Any]] = {"title_heading": False}  # older checkpoints
    data_builders: ClassVar[dict[str, DatasetBuilder]] = {
        "wikisum": DatasetBuilder(wikisum.WikisumConfig, wikisum.build_splits)
    }
    datasets = sources.DATASETS
    eval_config = evaluation.SummarizationEval
    evaluate = staticmethod(evaluation.evaluate)

    def generation_defaults(self) -> dict[str, Any]:
        """Beam search without repeated trigrams, up to the summary length trained on."""
        return {
            "temperature": 0.0,
            "num_beams": 4,
            "no_repeat_ngram_size": 3,
            "max_new_tokens": self.data.max_summary_tokens,
        }

    # ------------------------------------------------------------ fine-tuning

    def special_tokens(self) -> list[str]:
        return [SUMMARIZE]

    def load_split(self, split: str) -> list[dict[str, str]]:
        data = self.data
        source = data.train if split == "train" else data.val
        if source is None and split == "val" and data.train and not Path(data.train).is_file():
            source = data.train  # a dataset's validation split
        if source is None:
            raise DataError(
                f"set data.{'train' if split == 'train' else 'val'}: "
                "document/summary pairs (.jsonl or a dataset)"
            )
        hf_split = data.train_split if split == "train" else data.val_split
        examples = read_examples(source, data, hf_split)
        if not examples:
            raise DataError(f"{source}: no {split} examples")
        self.stats[f"{split}_examples"] = len(examples)
        return examples

    def build_tokenizer(self, splits: Splits, config: TokenizerConfig) -> Tokenizer:
        texts = (f"{e['document']}\n{e['summary']}" for e in splits.train)
        return SentencePieceTokenizer.train(texts, config)

    def encode(self, example: dict, tokenizer: Tokenizer, max_len: int) -> Example:
        summary = tokenizer.encode(example["summary"])
        keep = min(len(summary), self.summary_budget(max_len))
        prompt, prompt_cut = self.layout(example, tokenizer, max_len - 1 - keep)  # 1: eos
        answer = [*summary[:keep], tokenizer.eos_id]
        truncated = prompt_cut + len(summary) - keep
        return Example(prompt + answer, [0] * len(prompt) + [1] * len(answer), truncated)

    def summary_budget(self, max_len: int) -> int:
        """Most summary ids in a sequence of `max_len` ids (the context + 1)."""
        return min(self.data.max_summary_tokens, max_len // 2)

    def layout(self, example: dict, tokenizer: Tokenizer, room: int) -> tuple[list[int], int]:
        """`<bos> body <summarize> [title \n]` in at most `room` ids, and how many body and
        title ids were left out."""
        heading: list[int] = []
        if self.data.title_heading and example.get("title"):
            heading = tokenizer.encode(f"{example['title']}\n")
        kept_heading = heading[: min(MAX_HEADING_TOKENS, room // 4)]
        body, body_cut = self.select_body(example, tokenizer, room - 2 - len(kept_heading))
        prompt = [tokenizer.bos_id, *body, tokenizer.special_id(SUMMARIZE), *kept_heading]
        return prompt, body_cut + len(heading) - len(kept_heading)

    def select_body(self, example: dict, tokenizer: Tokenizer, room: int) -> tuple[list[int], int]:
        """Body ids that fit in `room`, and how many body ids were left out."""
        paragraphs = [p for p in example["document"].split("\n") if p.strip()]
        if self.data.body_selection == "tfidf" and example.get("title"):
            ranked = rank_paragraphs(example["title"], paragraphs)
        else:
            ranked = list(range(len(paragraphs)))
        chosen: dict[int, list[int]] = {}
        used = total = 0
        for index in ranked:
            ids = tokenizer.encode(("\n" if index else "") + paragraphs[index])
            total += len(ids)
            if used < room:
                chosen[index] = ids[: room - used]
                used += len(chosen[index])
        return [i for index in sorted(chosen) for i in chosen[index]], total - used

    # ------------------------------------------------------------ inference

    def prompt(self, source: str | dict, tokenizer: Tokenizer) -> list[int]:
        """Prompt ids for a document (a string, or a dict with `document` and `title`)."""
        example = source if isinstance(source, dict) else {"document": source}
        max_len = self.block_size + 1  # as in training: the context + 1
        return self.layout(example, tokenizer, max_len - 1 - self.summary_budget(max_len))[0]

    def decode(self, ids: list[int], tokenizer: Tokenizer) -> str:
        return tokenizer.decode(ids).strip()

    def segment_starts(self, ids: list[int], tokenizer: Tokenizer) -> list[int]:
        """The summary (after its heading) starts after the summarize token."""
        return [i + 1 for i, t in enumerate(ids) if t == tokenizer.special_id(SUMMARIZE)]

    def mbr_similarity(self) -> Callable[[str, str], float]:
        """ROUGE-2 + ROUGE-Lsum F1 between two summaries: the consensus is the likely best
        by the metric summaries are judged by."""
        from seqgen_tasks.summarization.rouge import RougeSimilarity

        return RougeSimilarity()


def rank_paragraphs(title: str, paragraphs: list[str]) -> list[int]:
    """Paragraph indices by decreasing tf-idf cosine similarity to the title (ties: earlier
    first); idf over the document's own paragraphs."""
    bags = [Counter(WORD.findall(p.lower())) for p in paragraphs]
    df = Counter(word for bag in bags for word in bag)
    idf = {w: math.log((1 + len(bags)) / (1 + n)) + 1 for w, n in df.items()}
    query = Counter(WORD.findall(title.lower()))

    def similarity(bag: Counter) -> float:
        vector = {w: c * idf[w] for w, c in bag.items()}
        norm = math.sqrt(sum(v * v for v in vector.values())) or 1.0
        return sum(vector.get(w, 0.0) * c * idf.get(w, 0.0) for w, c in query.items()) / norm

    scores = [similarity(bag) for bag in bags]
    return sorted(range(len(paragraphs)), key=lambda i: (-scores[i], i))
