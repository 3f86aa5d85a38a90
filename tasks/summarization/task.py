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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from seqgen.data import load_hf_dataset, read_jsonl
from seqgen.errors import DataError
from seqgen.examples import Example
from seqgen.tokenizer import SentencePieceTokenizer, Tokenizer, TokenizerConfig
from seqgen_tasks.summarization import wikisum

SUMMARIZE = "<summarize>"
MAX_HEADING_TOKENS = 32
WORD = re.compile(r"\w+")


@dataclass
class SummarizationData:
    """Document/summary pairs for summarization."""

    train: str | None = None
    """Training pairs: a .jsonl file, a `save_to_disk` directory or a Hugging Face dataset."""
    val: str | None = None
    """Validation pairs, in the same forms (default for a dataset: its `val_split`)."""
    document_field: str = "body"
    """Field holding the document (body, document, article, ...)."""
    summary_field: str = "lead"
    """Field holding the summary (lead, summary, highlights, ...)."""
    title_field: str | None = "title"
    """Field holding the title (for title_heading and body_selection tfidf); None if none."""
    id_field: str | None = "id"
    """Field holding a document id (kept in evaluation outputs); None to number them."""
    hf_config: str | None = None
    """Hugging Face dataset configuration (e.g. 3.0.0 for cnn_dailymail)."""
    train_split: str = "train"
    """Hugging Face split to train on."""
    val_split: str = "validation"
    """Hugging Face split to validate on when `val` is not set."""
    max_summary_tokens: int = 256
    """Longest summary in a sequence (longer ones are cut and counted); the body gets the
    rest of the context."""
    body_selection: Literal["first", "tfidf"] = "first"
    """How the body is cut to fit: its beginning (first), or its paragraphs ranked by tf-idf
    similarity to the title, kept best first until full, in original order (tfidf)."""
    title_heading: bool = True
    """Put the title (when there is one) after <summarize> as the summary's heading, as it
    heads an article: a lead opens with its subject, and a model pretrained on articles has
    seen titles followed by their leads."""


class SummarizationTask:
    name = "summarization"
    data_config = SummarizationData
    lm_weight = 0.0
    continues_prompt = False
    data_builders = {"wikisum": wikisum.main}
    generation_defaults = {"temperature": 0.0, "num_beams": 4, "no_repeat_ngram_size": 3,
                           "max_new_tokens": 256}  # fmt: skip

    def __init__(self) -> None:
        self.settings = SummarizationData()
        self.block_size: int | None = None
        self.stats: dict[str, int] = {}

    # ------------------------------------------------------------ fine-tuning

    def special_tokens(self, data: SummarizationData) -> list[str]:
        return [SUMMARIZE]

    def options(self, data: SummarizationData) -> dict[str, Any]:
        keys = ("document_field", "summary_field", "title_field", "id_field",
                "max_summary_tokens", "body_selection", "title_heading")  # fmt: skip
        return {key: getattr(data, key) for key in keys}

    def load(self, data: SummarizationData, split: str) -> list[dict[str, str]]:
        source = data.train if split == "train" else data.val
        if source is None and split == "val" and data.train and not Path(data.train).is_file():
            source = data.train  # a dataset's validation split
        if source is None:
            raise DataError(f"set data.{'train' if split == 'train' else 'val'}: "
                            "document/summary pairs (.jsonl or a dataset)")  # fmt: skip
        hf_split = data.train_split if split == "train" else data.val_split
        examples = read_examples(source, data, hf_split)
        if not examples:
            raise DataError(f"{source}: no {split} examples")
        self.stats[f"{split}_examples"] = len(examples)
        return examples

    def build_tokenizer(self, examples: list[dict], config: TokenizerConfig) -> Tokenizer:
        texts = (f"{e['document']}\n{e['summary']}" for e in examples)
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
        return min(self.settings.max_summary_tokens, max_len // 2)

    def layout(self, example: dict, tokenizer: Tokenizer, room: int) -> tuple[list[int], int]:
        """`<bos> body <summarize> [title \n]` in at most `room` ids, and how many body and
        title ids were left out."""
        heading: list[int] = []
        if self.settings.title_heading and example.get("title"):
            heading = tokenizer.encode(f"{example['title']}\n")
        kept_heading = heading[: min(MAX_HEADING_TOKENS, room // 4)]
        body, body_cut = self.select_body(example, tokenizer, room - 2 - len(kept_heading))
        prompt = [tokenizer.bos_id, *body, tokenizer.special_id(SUMMARIZE), *kept_heading]
        return prompt, body_cut + len(heading) - len(kept_heading)

    def select_body(self, example: dict, tokenizer: Tokenizer, room: int) -> tuple[list[int], int]:
        """Body ids that fit in `room`, and how many body ids were left out."""
        paragraphs = [p for p in example["document"].split("\n") if p.strip()]
        if self.settings.body_selection == "tfidf" and example.get("title"):
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

    def configure(self, options: dict[str, Any], block_size: int) -> None:
        known = {k: v for k, v in options.items() if k in SummarizationData.__dataclass_fields__}
        known.setdefault("title_heading", False)  # checkpoints older than the option lack it
        self.settings = SummarizationData(**known)
        self.block_size = block_size

    def prompt(self, source: str | dict, tokenizer: Tokenizer) -> list[int]:
        """Prompt ids for a document (a string, or a dict with `document` and `title`)."""
        example = source if isinstance(source, dict) else {"document": source}
        max_len = (self.block_size or 1024) + 1  # as in training: the context + 1
        return self.layout(example, tokenizer, max_len - 1 - self.summary_budget(max_len))[0]

    def decode(self, ids: list[int], tokenizer: Tokenizer) -> str:
        return tokenizer.decode(ids).strip()

    def evaluate(self, argv: list[str]) -> dict[str, Any]:
        from seqgen_tasks.summarization.evaluate import main

        return main(argv)

    def mbr_similarity(self) -> Callable[[str, str], float]:
        """ROUGE-2 + ROUGE-Lsum F1 between two summaries: the consensus is the likely best
        by the metric summaries are judged by."""
        from seqgen_tasks.summarization.rouge import rouge_similarity

        return rouge_similarity()


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


# ---------------------------------------------------------------- reading


def read_examples(source: str, data: SummarizationData, hf_split: str) -> list[dict[str, str]]:
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix != ".jsonl":
            raise DataError(f"{path}: summarization data is .jsonl (one JSON object per line)")
        rows = list(read_jsonl(path))
    elif source.startswith((".", "/", "~")) and not path.is_dir():
        raise DataError(f"{path}: no such file")
    else:
        dataset = load_hf_dataset(source, data.hf_config, hf_split)
        rows = [(f"{source} [{hf_split}] row {i}", row) for i, row in enumerate(dataset)]
    return [_example(row, data, where, n) for n, (where, row) in enumerate(rows)]


def _example(row: Any, data: SummarizationData, where: str, n: int) -> dict[str, str]:
    fields = [data.document_field, data.summary_field]
    if not isinstance(row, dict) or any(f not in row for f in fields):
        keys = ", ".join(row) if isinstance(row, dict) else type(row).__name__
        raise DataError(f"{where}: needs fields {fields[0]!r} and {fields[1]!r} (has: {keys}); "
                        "set data.document_field / data.summary_field")  # fmt: skip
    for f in fields:
        if not isinstance(row[f], str):
            raise DataError(f"{where}: field {f!r} is not a string")
    title = row.get(data.title_field, "") if data.title_field else ""
    ident = row.get(data.id_field) if data.id_field else None
    return {"id": str(ident if ident is not None else n), "title": str(title or ""),
            "document": row[fields[0]], "summary": row[fields[1]]}  # fmt: skip
