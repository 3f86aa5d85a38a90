"""`seqgen evaluate --task translation`: translate a source file (beam search by default) and
score the output against references with sacreBLEU: BLEU (cased, 13a tokenization) and chrF,
each with its signature. `--hypotheses FILE` scores any system's output without a model.

Translations longer than twice their prompt plus 10 tokens are cut there (a runaway)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seqgen.errors import DataError
from seqgen.evaluation import DecodingEval, write_json
from seqgen.files import check_writable
from seqgen.progress import Progress
from seqgen.tables import markdown_table
from seqgen_tasks.translation.data import read_lines


def score(
    hypotheses: list[str],
    references: list[str],
    bootstrap_samples: int = 1000,
    seed: int = 0,
    compared: list[str] | None = None,
) -> dict[str, Any]:
    """Corpus BLEU and chrF against one reference each, with 95% bootstrap intervals
    (`bleu_ci`, `chrf_ci`: [low, high]) and, for `compared` (another system's output for
    the same sentences), this system minus it with a paired bootstrap interval."""
    from sacrebleu.metrics import BLEU, CHRF  # imported when scoring, not with the task

    if len(hypotheses) != len(references):
        raise DataError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    bleu, chrf = BLEU(), CHRF()
    b = bleu.corpus_score(hypotheses, [references])
    c = chrf.corpus_score(hypotheses, [references])
    report: dict[str, Any] = {
        "bleu": b.score,
        "chrf": c.score,
        "bleu_precisions": b.precisions,
        "brevity_penalty": b.bp,
        "hypothesis_length": b.sys_len,
        "reference_length": b.ref_len,
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
        "sentences": len(hypotheses),
        "bootstrap_samples": bootstrap_samples,
    }
    # the same resampled sentences for every score, so differences are paired
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(hypotheses), size=(bootstrap_samples, len(hypotheses)))
    for name, metric in (("bleu", bleu), ("chrf", chrf)):
        ours = resampled(metric, hypotheses, references, rows)
        report[f"{name}_ci"] = interval(ours)
        if compared is not None:
            theirs = resampled(metric, compared, references, rows)
            actual = report[name] - metric.corpus_score(compared, [references]).score
            low, high = interval(ours - theirs)
            report.setdefault("compare", {})[name] = {"mid": actual, "low": low, "high": high}
    return report


def resampled(
    metric: Any, hypotheses: list[str], references: list[str], rows: np.ndarray
) -> np.ndarray:
    """The corpus score of each resample of the sentences (rows of indices), from
    sacreBLEU's own sufficient statistics, as its --confidence and paired tests do."""
    stats = np.array(metric._extract_corpus_statistics(hypotheses, [references]), dtype=np.float64)
    return np.array([metric._compute_score_from_stats(stats[row].sum(0)).score for row in rows])


def interval(scores: np.ndarray) -> list[float]:
    """The central 95% of bootstrap scores, [low, high]."""
    low, high = np.percentile(scores, [2.5, 97.5])
    return [float(low), float(high)]


@dataclass(kw_only=True)
class TranslationEval(DecodingEval):
    """Translate a source file with a checkpoint (--ckpt, beam search by default) or read any
    system's translations (--hypotheses), and score them against references with sacreBLEU:
    BLEU (cased, 13a tokenization) and chrF, each with its signature. Minimum Bayes risk
    decoding picks by sentence chrF."""

    reference: str
    """Reference translations, one per line."""
    source: str | None = None
    """Source sentences, one per line (with ckpt)."""
    hypotheses: str | None = None
    """Score this file (one translation per line) instead of a checkpoint's output."""
    output: str | None = None
    """Write the translations here, one per line."""
    compare: str | None = None
    """Another system's translations of the same sentences (one per line): report this
    system minus it with a paired bootstrap interval, tighter than comparing two intervals."""
    batch_size: int = 64
    """Sentences (or MBR samples) decoded at once, each with its beams under beam search; one
    that finishes makes room for the next at once."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.ckpt is None) == (self.hypotheses is None):
            raise ValueError("give ckpt (with source) or hypotheses, not both")
        if self.ckpt and not self.source:
            raise ValueError("ckpt needs source (the sentences to translate)")
        check_writable(self.output, "output")


def translate(config: TranslationEval, sources: list[str]) -> list[str]:
    from seqgen.inference import load

    generator = load(config.ckpt, task="translation", **config.load_options())
    options = config.generation_options()
    longest = options.pop("max_new_tokens")

    def budget(prompt_ids: list[int]) -> int:  # the generator caps it at the context's end
        return min(longest, 2 * len(prompt_ids) + 10)

    settings = dict(options, max_new_tokens=budget, batch_size=config.batch_size, seed=config.seed)
    if config.mbr_samples > 1:
        return generator.generate_mbr(
            sources,
            samples=config.mbr_samples,
            similarity=generator.task.mbr_similarity(),
            on_done=Progress("sampled", len(sources) * config.mbr_samples, "translations"),
            **settings,
        )
    return generator.generate_many(
        sources, on_done=Progress("translated", len(sources), "sentences"), **settings
    )


def evaluate(config: TranslationEval) -> dict[str, Any]:
    references = read_lines(Path(config.reference))
    if not references:
        raise DataError(f"{config.reference}: no lines to score against")
    compared = None  # read first: a bad file fails before any translation
    if config.compare:
        compared = read_lines(Path(config.compare))
        if len(compared) != len(references):
            raise DataError(
                f"{config.compare} has {len(compared)} lines, {config.reference} "
                f"has {len(references)}"
            )
        compared = compared[: config.limit]
    if config.ckpt:
        sources = read_lines(Path(config.source))
        if len(sources) != len(references):
            raise DataError(
                f"{config.source} has {len(sources)} lines, {config.reference} "
                f"has {len(references)}"
            )
        sources, references = sources[: config.limit], references[: config.limit]
        started = time.perf_counter()
        hypotheses = translate(config, sources)
        # one line each for every reader (\r, \x1e, U+2028... also end lines for some)
        hypotheses = [" ".join(h.splitlines()) for h in hypotheses]
        seconds = time.perf_counter() - started
    else:
        hypotheses = read_lines(Path(config.hypotheses))
        if len(hypotheses) != len(references):
            raise DataError(
                f"{config.hypotheses} has {len(hypotheses)} lines, "
                f"{config.reference} has {len(references)}"
            )
        hypotheses, references = hypotheses[: config.limit], references[: config.limit]
        seconds = None
    report = score(hypotheses, references, config.bootstrap_samples, config.seed, compared)
    if seconds is not None:
        report.update(
            decode_seconds=seconds,
            sentences_per_second=len(sources) / seconds,
            beams=config.num_beams,
            checkpoint=config.ckpt,
            temperature=config.temperature,
            top_p=config.top_p,
            mbr_samples=config.mbr_samples,
            seed=config.seed,
        )
    if config.output:
        Path(config.output).parent.mkdir(parents=True, exist_ok=True)
        Path(config.output).write_text("".join(h + "\n" for h in hypotheses))
    write_json(config.report, report)
    rows = [
        (
            "model" if config.ckpt else Path(config.hypotheses).name,
            *(
                f"{report[m]:.2f} [{report[m + '_ci'][0]:.2f}, {report[m + '_ci'][1]:.2f}]"
                for m in ("bleu", "chrf")
            ),
        )
    ]
    if "compare" in report:
        rows.append(
            (
                f"minus {Path(config.compare).name} (paired)",
                *(
                    f"{d['mid']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"
                    for d in report["compare"].values()
                ),
            )
        )
    print(markdown_table(["system", "BLEU", "chrF"], rows))
    print(
        f"\n{len(hypotheses)} sentences; 95% bootstrap intervals in brackets\n"
        f"{report['bleu_signature']}\n{report['chrf_signature']}"
    )
    return report
