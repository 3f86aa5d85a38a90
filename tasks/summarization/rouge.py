"""ROUGE users can trust: rouge-score's ROUGE-1/2/L/Lsum (Porter stemming), Lsum over sentences
split here (rouge-score's own splitter needs NLTK data, which an offline machine lacks),
precision / recall / F1 in percent with 95% bootstrap confidence intervals, per-document
scores, length statistics, and a lead-N-words baseline scored the same way."""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
from absl import logging as absl_logging
from rouge_score import rouge_scorer, tokenizers

absl_logging.set_verbosity(absl_logging.WARNING)  # rouge-score logs each scorer it builds

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
PARTS = ("precision", "recall", "fmeasure")
# a sentence ends at . ! ? (and closing quotes/brackets) followed by space and a capital,
# digit or quote; "e.g. the" and "3.5" stay whole
SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """Sentences of `text`, paragraph breaks (newlines) always ending one."""
    out = []
    for paragraph in text.split("\n"):
        out += [s.strip() for s in SENTENCE_END.split(paragraph) if s.strip()]
    return out


def score_documents(predictions: list[str], references: list[str], ignore: Sequence[str] = ()
                    ) -> list[dict[str, Any]]:  # fmt: skip
    """Per document: {rouge_type: {precision, recall, fmeasure}} in percent.

    `ignore`: strings removed from both sides first, such as WikiText's `<unk>`, which stands
    for a different rare word each time yet would match itself (as the word "unk").
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    scores = []
    for prediction, reference in zip(predictions, references, strict=True):
        for text in ignore:
            prediction, reference = prediction.replace(text, " "), reference.replace(text, " ")
        # one sentence per line: rougeLsum takes the union LCS over those lines
        result = scorer.score("\n".join(split_sentences(reference)),
                              "\n".join(split_sentences(prediction)))  # fmt: skip
        scores.append({t: {p: 100 * getattr(result[t], p) for p in PARTS} for t in ROUGE_TYPES})
    return scores


def rouge_similarity(ignore: Sequence[str] = ()) -> Callable[[str, str], float]:
    """`similarity(summary, other)`: ROUGE-2 F1 + ROUGE-Lsum F1 (0 to 2) of `summary` scored
    against `other`, the utility of minimum Bayes risk decoding. Each text is split,
    tokenized and stemmed once however many pairs it is in (16 samples make 240 pairs)."""
    stemmer = tokenizers.DefaultTokenizer(use_stemmer=True)

    class CachedTokenizer:
        tokenize = staticmethod(lru_cache(maxsize=4096)(stemmer.tokenize))

    scorer = rouge_scorer.RougeScorer(["rouge2", "rougeLsum"], tokenizer=CachedTokenizer())

    @lru_cache(maxsize=4096)
    def lines(text: str) -> str:
        for placeholder in ignore:
            text = text.replace(placeholder, " ")
        return "\n".join(split_sentences(text))

    def similarity(summary: str, other: str) -> float:
        result = scorer.score(lines(other), lines(summary))  # (target, prediction)
        return result["rouge2"].fmeasure + result["rougeLsum"].fmeasure

    return similarity


def bootstrap(per_document: list[dict[str, Any]], samples: int = 1000, seed: int = 0
              ) -> dict[str, dict[str, dict[str, float]]]:  # fmt: skip
    """Corpus scores (the mean over documents) as {type: {part: {low, mid, high}}}: the 2.5th,
    50th and 97.5th percentiles of the mean over `samples` resamplings of the documents."""
    values = np.array([[d[t][p] for t in ROUGE_TYPES for p in PARTS] for d in per_document])
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(values), size=(samples, len(values)))
    means = values[draws].mean(axis=1)  # (samples, types x parts)
    low, mid, high = np.percentile(means, [2.5, 50.0, 97.5], axis=0)
    result: dict[str, dict[str, dict[str, float]]] = {}
    for k, (t, p) in enumerate((t, p) for t in ROUGE_TYPES for p in PARTS):
        result.setdefault(t, {})[p] = {
            "low": float(low[k]), "mid": float(mid[k]), "high": float(high[k]),
            "mean": float(values[:, k].mean()),
        }  # fmt: skip
    return result


def paired_difference(
    first: list[dict[str, Any]], second: list[dict[str, Any]], samples: int = 1000, seed: int = 0
) -> dict[str, dict[str, float]]:
    """F1 of `first` minus F1 of `second` (per-document scores of two systems on the same
    documents) as {type: {low, mid, high, mean}}, resampling documents for both at once.

    Tighter than comparing two systems' own intervals: how hard each document is cancels out.
    A difference whose interval lies above 0 is significant at the 5% level (two-sided).
    """
    if len(first) != len(second):
        raise ValueError(
            f"{len(first)} documents scored for one system, {len(second)} for the other"
        )
    differences = [{t: {p: a[t][p] - b[t][p] for p in PARTS} for t in ROUGE_TYPES}
                   for a, b in zip(first, second, strict=True)]  # fmt: skip
    return {t: s["fmeasure"] for t, s in bootstrap(differences, samples, seed).items()}


def length_stats(texts: list[str]) -> dict[str, float]:
    words = [len(t.split()) for t in texts]
    return {"mean_words": statistics.fmean(words), "median_words": statistics.median(words),
            "min_words": min(words), "max_words": max(words)}  # fmt: skip


def lead_words(document: str, n: int) -> str:
    """The first n words of a document (the extractive baseline), line breaks kept."""
    kept, count = [], 0
    for line in document.split("\n"):
        words = line.split()
        if count + len(words) >= n:
            kept.append(" ".join(words[: n - count]))
            break
        kept.append(" ".join(words))
        count += len(words)
    return "\n".join(k for k in kept if k)


def table_rows(systems: dict[str, dict[str, Any]]) -> list[tuple[str, ...]]:
    """F1 with its 95% interval per ROUGE type, and mean words, one row per system."""
    return [(name, *(f"{s['mid']:.2f} [{s['low']:.2f}, {s['high']:.2f}]"
                     for s in (result["scores"][t]["fmeasure"] for t in ROUGE_TYPES)),
             f"{result['lengths']['mean_words']:.0f}")
            for name, result in systems.items()]  # fmt: skip


TABLE_HEADER = ("system", *(f"{t} F1" for t in ROUGE_TYPES), "words")
