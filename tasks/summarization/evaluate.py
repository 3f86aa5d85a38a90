"""`seqgen evaluate --task summarization`: summarize a dataset with a checkpoint, or read any
system's predictions, and score them with ROUGE-1/2/L/Lsum (95% bootstrap intervals) beside
an extractive baseline (the first N words of each document, N = mean reference length)."""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seqgen.data import read_jsonl
from seqgen.errors import DataError
from seqgen.evaluation import DecodingEval, write_json
from seqgen.files import check_writable
from seqgen.progress import Progress
from seqgen.tables import markdown_table
from seqgen.tasks import known_options
from seqgen_tasks.summarization.data import SummarizationData, read_examples
from seqgen_tasks.summarization.rouge import (
    TABLE_HEADER,
    RougeSimilarity,
    bootstrap,
    lead_words,
    length_stats,
    paired_difference,
    score_documents,
    table_rows,
)


@dataclass(kw_only=True)
class SummarizationEval(DecodingEval):
    """Score summaries with ROUGE (95% bootstrap intervals) beside a first-N-words baseline:
    a checkpoint's (--ckpt, beam search by default) or any system's (--predictions).
    Minimum Bayes risk decoding picks by ROUGE-2 + ROUGE-Lsum F1 (--ignore applies)."""

    data: str
    """Documents and references: .jsonl or a dataset."""
    predictions: str | None = None
    """JSONL of {id, prediction} to score instead of a checkpoint's output."""
    split: str = "validation"
    """Dataset split (not for .jsonl)."""
    document_field: str | None = None
    """Field of the documents (default: the checkpoint's, or body)."""
    summary_field: str | None = None
    """Field of the references (default: the checkpoint's, or lead)."""
    id_field: str | None = None
    """Field of the document ids (default: the checkpoint's, or id)."""
    prediction_field: str = "prediction"
    """Field of the summaries in predictions and compare files."""
    batch_size: int = 32
    """Documents (or MBR samples) decoded at once, each with its beams under beam search; one
    that finishes makes room for the next at once. On a 2-core CPU 128 MBR
    samples decoded 1.26x faster than 32 (each sample's keys and values of its article are
    shared, so larger batches read little more). The samples do not depend on it (but for
    float rounding at near-ties): each is drawn from its own stream of the seed."""
    baseline_words: int | None = None
    """Baseline length (default: mean reference length in words)."""
    output: str | None = None
    """Write predictions with per-document scores (JSONL) here."""
    ignore: list[str] = field(default_factory=list)
    """Remove these strings from every summary and reference before scoring, e.g.
    WikiText's <unk>: it stands for a different rare word each time, yet would match
    itself."""
    compare: str | None = None
    """Another system's JSONL {id, prediction}: report this system minus it, with a paired
    bootstrap interval (the same documents resampled for both), which is tighter than
    comparing two intervals."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.ckpt is None) == (self.predictions is None):
            raise ValueError("give ckpt or predictions, not both")
        check_writable(self.output, "output")


def read_predictions(path: Path, field: str, ids: list[str]) -> list[str]:
    """Predictions in the order of `ids`; every id exactly once, nothing else."""
    found: dict[str, str] = {}
    for where, row in read_jsonl(path):
        if not isinstance(row, dict) or "id" not in row or not isinstance(row.get(field), str):
            raise DataError(f"{where}: needs 'id' and a string {field!r}")
        if str(row["id"]) in found:
            raise DataError(f"{where}: duplicate id {row['id']!r}")
        found[str(row["id"])] = row[field]
    missing = [i for i in ids if i not in found]
    extra = [i for i in found if i not in set(ids)]
    if missing or extra:
        raise DataError(
            f"{path}: {len(found)} predictions for {len(ids)} documents; "
            f"missing ids: {missing[:5]}, unknown ids: {extra[:5]}"
        )
    return [found[i] for i in ids]


def summarize(args: SummarizationEval, examples: list[dict]) -> tuple[list[str], float]:
    from seqgen.inference import load

    generator = load(args.ckpt, task="summarization", **args.load_options())
    documents = [{"document": e["document"], "title": e["title"]} for e in examples]
    settings = dict(args.generation_options(), seed=args.seed, batch_size=args.batch_size)
    started = time.perf_counter()
    if args.mbr_samples > 1:
        outputs = generator.generate_mbr(
            documents,
            samples=args.mbr_samples,
            similarity=RougeSimilarity(args.ignore),
            on_done=Progress("sampled", len(documents) * args.mbr_samples, "summaries"),
            **settings,
        )
    else:
        outputs = generator.generate_many(
            documents, on_done=Progress("summarized", len(documents), "articles"), **settings
        )
    return outputs, time.perf_counter() - started


def data_fields(args: SummarizationEval) -> SummarizationData:
    options: dict[str, Any] = {}
    if args.ckpt:
        from seqgen import checkpoint

        options = checkpoint.read_meta(checkpoint.resolve(args.ckpt)).get("task_options", {})
    chosen = {
        "document_field": args.document_field,
        "summary_field": args.summary_field,
        "id_field": args.id_field,
    }
    for key, value in chosen.items():
        if value is not None:
            options[key] = value
    return SummarizationData(**known_options(SummarizationData, options))


def evaluate(args: SummarizationEval) -> dict[str, Any]:
    examples = read_examples(args.data, data_fields(args), args.split)[: args.limit]
    if not examples:
        raise DataError(f"{args.data}: no documents")
    ids = [e["id"] for e in examples]
    if len(set(ids)) != len(ids):
        raise DataError(f"{args.data}: document ids are not unique")
    references = [e["summary"] for e in examples]
    compared = None  # read first: a bad file fails before any generation
    if args.compare:
        compared = read_predictions(Path(args.compare), args.prediction_field, ids)
    seconds = None
    if args.ckpt:
        predictions, seconds = summarize(args, examples)
    else:
        predictions = read_predictions(Path(args.predictions), args.prediction_field, ids)
    n_words = args.baseline_words or round(statistics.fmean(len(r.split()) for r in references))
    baseline = [lead_words(e["document"], n_words) for e in examples]
    per_doc = score_documents(predictions, references, args.ignore)
    systems = {
        "model" if args.ckpt else "predictions": per_doc,
        f"first {n_words} words": score_documents(baseline, references, args.ignore),
    }
    texts = dict(zip(systems, (predictions, baseline), strict=True))
    results = {
        name: {
            "scores": bootstrap(scores, args.bootstrap_samples, args.seed),
            "lengths": length_stats(texts[name]),
        }
        for name, scores in systems.items()
    }
    report = {
        "documents": len(examples),
        "system": results[next(iter(systems))],
        "baseline": results[f"first {n_words} words"],
        "baseline_words": n_words,
        "reference_lengths": length_stats(references),
        "rouge": "rouge-score, Porter stemmer, "
        "Lsum over sentences split by seqgen_tasks.summarization.rouge.split_sentences; "
        "F1/precision/recall in %",
        "ignored": args.ignore,
    }
    if compared is not None:
        difference = paired_difference(
            per_doc,
            score_documents(compared, references, args.ignore),
            args.bootstrap_samples,
            args.seed,
        )
        report["compared"] = {"predictions": args.compare, "difference": difference}
    if seconds is not None:
        report.update(
            decode_seconds=seconds,
            beams=args.num_beams,
            checkpoint=args.ckpt,
            mbr_samples=args.mbr_samples,
        )
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        rows = [
            {"id": i, "prediction": p, "scores": s}
            for i, p, s in zip(ids, predictions, per_doc, strict=True)
        ]
        Path(args.output).write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        )
    write_json(args.report, report)
    rows = table_rows(results)
    if compared is not None:
        rows.append(
            (
                f"minus {Path(args.compare).name} (paired)",
                *(
                    f"{d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"
                    for d in difference.values()
                ),
                "",
            )
        )
    print(markdown_table(TABLE_HEADER, rows))
    print(
        f"\n{len(examples)} documents; references {report['reference_lengths']['mean_words']:.0f}"
        " words on average; F1 in %, 95% bootstrap intervals in brackets"
    )
    return report
