"""ROUGE users can trust: rouge-score's ROUGE-1/2/L/Lsum (Porter stemming), Lsum over sentences
split here (rouge-score's own splitter needs NLTK data, which an offline machine lacks),
precision / recall / F1 in percent with 95% bootstrap confidence intervals, per-document
scores, length statistics, and a lead-N-words baseline scored the same way."""

from __future__ import annotations

import itertools
import re
import statistics
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
from absl import logging as absl_logging
from rouge_score import rouge_scorer, scoring, tokenizers

from seqgen.tasks import Similarity

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


def score_documents(
    predictions: list[str], references: list[str], ignore: Sequence[str] = ()
) -> list[dict[str, Any]]:
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
        result = scorer.score(
            "\n".join(split_sentences(reference)), "\n".join(split_sentences(prediction))
        )
        scores.append({t: {p: 100 * getattr(result[t], p) for p in PARTS} for t in ROUGE_TYPES})
    return scores


class RougeSimilarity(Similarity):
    """`similarity(summary, other)`: ROUGE-2 F1 + ROUGE-Lsum F1 (0 to 2) of `summary` scored
    against `other` by rouge-score, the utility of minimum Bayes risk decoding.

    `matrix` scores every pair of a group of samples with the same numbers (tested equal)
    far faster: each text is split, tokenized and counted once, and rouge-score's union
    longest common subsequences of all pairs run as array operations (`union_lcs`) instead
    of a Python loop per table cell.

    Args:
        ignore: strings removed from every text first (e.g. WikiText's `<unk>`).
    """

    def __init__(self, ignore: Sequence[str] = ()) -> None:
        stemmer = tokenizers.DefaultTokenizer(use_stemmer=True)
        tokenize = lru_cache(maxsize=8192)(stemmer.tokenize)

        class CachedTokenizer:
            def tokenize(self, text: str) -> list[str]:
                return tokenize(text)

        self.tokenize = tokenize
        self.scorer = rouge_scorer.RougeScorer(["rouge2", "rougeLsum"], tokenizer=CachedTokenizer())
        self.ignore = tuple(ignore)
        self.lines = lru_cache(maxsize=4096)(self._lines)

    def _lines(self, text: str) -> str:
        """One sentence per line, as rougeLsum takes them."""
        for placeholder in self.ignore:
            text = text.replace(placeholder, " ")
        return "\n".join(split_sentences(text))

    def __call__(self, summary: str, other: str) -> float:
        result = self.scorer.score(self.lines(other), self.lines(summary))  # (target, prediction)
        return result["rouge2"].fmeasure + result["rougeLsum"].fmeasure

    def matrix(self, candidates: Sequence[str]) -> list[list[float]]:
        """`[i][j] = self(candidates[i], candidates[j])`, every pair at once."""
        texts = [self.lines(c) for c in candidates]
        vocabulary: dict[str, int] = {}
        ids = lambda tokens: [vocabulary.setdefault(t, len(vocabulary)) for t in tokens]  # noqa: E731
        # rouge-score: rouge2 over the whole text's tokens, rougeLsum over its lines' tokens
        words = [ids(self.tokenize(text)) for text in texts]
        sentences = [
            [ids(self.tokenize(line)) for line in text.split("\n") if line] for text in texts
        ]
        counts = np.zeros((len(texts), len(vocabulary)), dtype=np.int64)
        for row, sentence_ids in enumerate(sentences):
            np.add.at(counts[row], [i for s in sentence_ids for i in s], 1)
        bigram_overlap, bigram_totals = _bigram_overlap(words)
        lsum_hits = _lsum_hits(sentences, counts)
        lengths = counts.sum(axis=1).tolist()
        result = [[0.0] * len(texts) for _ in texts]
        for i, j in itertools.permutations(range(len(texts)), 2):  # prediction i, target j
            overlap = int(bigram_overlap[i, j])
            rouge2 = scoring.fmeasure(
                overlap / max(bigram_totals[i], 1), overlap / max(bigram_totals[j], 1)
            )
            lsum = 0
            if sentences[i] and sentences[j] and lengths[i] and lengths[j]:
                hits = int(lsum_hits[j, i])
                lsum = scoring.fmeasure(hits / lengths[i], hits / lengths[j])
            result[i][j] = rouge2 + lsum
        return result


def _bigram_overlap(words: list[list[int]]) -> tuple[np.ndarray, list[int]]:
    """Clipped bigram matches of every pair of texts, (N, N), and each text's bigram count."""
    bigrams = [list(zip(w, w[1:], strict=False)) for w in words]
    index: dict[tuple[int, int], int] = {}
    counts = np.zeros((len(words), 1 + sum(map(len, bigrams))), dtype=np.int64)
    for row, pairs in enumerate(bigrams):
        np.add.at(counts[row], [index.setdefault(p, len(index)) for p in pairs], 1)
    counts = counts[:, : len(index)]
    overlap = np.minimum(counts[:, None, :], counts[None, :, :]).sum(axis=2)
    return overlap, [len(pairs) for pairs in bigrams]


def _lsum_hits(sentences: list[list[list[int]]], counts: np.ndarray) -> np.ndarray:
    """`hits[t, p]`: ROUGE-Lsum's hits of prediction p against target t (sentences of token
    ids; counts: each text's token counts). rouge-score counts the union-LCS tokens of each
    target sentence while both texts still have that token left, in order; that is, per
    token, the fewest of its union-LCS occurrences and its count in the prediction."""
    n = len(sentences)
    hits = np.zeros((n, n), dtype=np.int64)
    for target in range(n):
        others = [p for p in range(n) if p != target and sentences[p]]
        if not sentences[target] or not others:
            continue
        marks = union_lcs(sentences[target], [sentences[p] for p in others])
        reference = _padded(sentences[target], marks.shape[2])
        for k, prediction in enumerate(others):
            union = np.bincount(reference[marks[k]], minlength=counts.shape[1])
            hits[target, prediction] = np.minimum(union, counts[prediction]).sum()
    return hits


def _padded(sentences: list[list[int]], width: int, fill: int = -1) -> np.ndarray:
    rows = np.full((len(sentences), width), fill, dtype=np.int64)
    for row, sentence in enumerate(sentences):
        rows[row, : len(sentence)] = sentence
    return rows


def union_lcs(reference: list[list[int]], predictions: list[list[list[int]]]) -> np.ndarray:
    """`marks[k, s, i]`: token i of reference sentence s is in rouge-score's union LCS of
    that sentence with the sentences of prediction k: the union over prediction sentences of
    the LCS that `rouge_scorer._backtrack_norec` reads out of each table.

    All tables of all pairs are filled together, one reference position at a time: the
    prediction sentences lie side by side as columns (each after a boundary column), row i
    of a table is the running maximum of `row[i-1][j-1] + 1` where the tokens match and
    `row[i-1][j]` elsewhere, and each table's values are offset so the running maximum
    never crosses into the next. The read-outs then step all tables at once. The reference
    sentences are taken longest first, so that row i is filled only for those that reach
    position i (a read-out never looks past its sentence's end): WikiSum's leads, their
    sentences padded to each lead's longest, were half padding.
    """
    longest_first = sorted(range(len(reference)), key=lambda s: -len(reference[s]))
    reference = [reference[s] for s in longest_first]
    lengths = np.array([len(s) for s in reference])
    width = int(lengths.max())
    marks = np.zeros((len(predictions), len(reference), width), dtype=bool)
    columns: list[int] = []  # prediction tokens; -2 marks a table's boundary column
    starts, owners, offsets = [], [], []  # per table: boundary column, prediction index
    for k, prediction in enumerate(predictions):
        for sentence in prediction:
            offsets += [len(starts) * (width + 1)] * (len(sentence) + 1)
            starts.append(len(columns))
            owners.append(k)
            columns += [-2, *sentence]
    if width == 0 or not starts:
        return marks
    rows = _padded(reference, width)  # padding (-1) matches nothing
    tokens = np.array(columns)
    table = np.empty((width + 1, len(reference), len(columns)), dtype=np.int32)
    table[0] = offsets
    step = np.empty((len(reference), len(columns)), dtype=np.int32)
    diagonal = np.empty((len(reference), len(columns) - 1), dtype=np.int32)
    matches = np.empty((len(reference), len(columns) - 1), dtype=bool)
    for i in range(1, width + 1):
        n = int((lengths >= i).sum())  # the sentences that reach position i
        above = table[i - 1, :n]
        step[:n, 0] = above[:, 0]
        # row[i-1][j-1] + 1 where the tokens match (never below row[i-1][j]: a table's row
        # grows by at most one a column), else 0: the larger of it and row[i-1][j]
        np.equal(rows[:n, i - 1, None], tokens[1:], out=matches[:n])
        np.add(above[:, :-1], 1, out=diagonal[:n])
        np.multiply(diagonal[:n], matches[:n], out=diagonal[:n])
        np.maximum(diagonal[:n], above[:, 1:], out=step[:n, 1:])
        np.maximum.accumulate(step[:n], axis=1, out=table[i, :n])
    # read out every (reference sentence, prediction sentence) table at once, by flat indices
    # (into table, rows and marks) that a step moves as it moves i and j
    ends = np.array(starts[1:] + [len(columns)]) - 1
    sentence, which = (a.ravel() for a in np.indices((len(reference), len(starts))))
    i, j, start = lengths[sentence], ends[which], np.array(starts)[which]
    plane = len(reference) * len(columns)  # table[i] to table[i - 1]
    cell = (i * len(reference) + sentence) * len(columns) + j  # table[i, sentence, j]
    token = sentence * width + i - 1  # rows[sentence, i - 1] and marks[owner, sentence, i - 1]
    token_mark = token + np.array(owners)[which] * len(reference) * width
    flat_table, flat_rows, flat_marks = table.ravel(), rows.ravel(), marks.reshape(-1)
    while True:
        alive = (i > 0) & (j > start)
        if not alive.any():
            return marks[:, np.argsort(longest_first)]
        i, j, start, cell, token, token_mark = (
            a[alive] for a in (i, j, start, cell, token, token_mark)
        )
        match = flat_rows[token] == tokens[j]
        flat_marks[token_mark[match]] = True
        left_wins = flat_table[cell - 1] > flat_table[cell - plane]
        up, left = match | ~left_wins, match | left_wins  # steps back in i, in j
        i, j = i - up, j - left
        cell = cell - up * plane - left
        token, token_mark = token - up, token_mark - up


def bootstrap(
    per_document: list[dict[str, Any]], samples: int = 1000, seed: int = 0
) -> dict[str, dict[str, dict[str, float]]]:
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
            "low": float(low[k]),
            "mid": float(mid[k]),
            "high": float(high[k]),
            "mean": float(values[:, k].mean()),
        }
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
    differences = [
        {t: {p: a[t][p] - b[t][p] for p in PARTS} for t in ROUGE_TYPES}
        for a, b in zip(first, second, strict=True)
    ]
    return {t: s["fmeasure"] for t, s in bootstrap(differences, samples, seed).items()}


def length_stats(texts: list[str]) -> dict[str, float]:
    words = [len(t.split()) for t in texts]
    return {
        "mean_words": statistics.fmean(words),
        "median_words": statistics.median(words),
        "min_words": min(words),
        "max_words": max(words),
    }


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
    return [
        (
            name,
            *(
                f"{s['mid']:.2f} [{s['low']:.2f}, {s['high']:.2f}]"
                for s in (result["scores"][t]["fmeasure"] for t in ROUGE_TYPES)
            ),
            f"{result['lengths']['mean_words']:.0f}",
        )
        for name, result in systems.items()
    ]


TABLE_HEADER = ("system", *(f"{t} F1" for t in ROUGE_TYPES), "words")
