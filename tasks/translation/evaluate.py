"""`seqgen evaluate --task translation`: translate a source file (beam search by default) and
score the output against references with sacreBLEU: BLEU (cased, 13a tokenization) and chrF,
each with its signature. `--hypotheses FILE` scores any system's output without a model."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from sacrebleu.metrics import BLEU, CHRF

from seqgen.errors import DataError
from seqgen.evaluation import (
    Progress,
    add_sampling_options,
    check_sampling,
    evaluation_parser,
    write_json,
)
from seqgen_tasks.translation.data import read_lines


def score(hypotheses: list[str], references: list[str]) -> dict[str, Any]:
    """Corpus BLEU and chrF of hypotheses against one reference each."""
    if len(hypotheses) != len(references):
        raise DataError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    bleu, chrf = BLEU(), CHRF()
    b = bleu.corpus_score(hypotheses, [references])
    c = chrf.corpus_score(hypotheses, [references])
    return {
        "bleu": b.score,
        "chrf": c.score,
        "bleu_precisions": b.precisions,
        "brevity_penalty": b.bp,
        "hypothesis_length": b.sys_len,
        "reference_length": b.ref_len,
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
        "sentences": len(hypotheses),
    }


def translate(ckpt: str, sources: list[str], args: argparse.Namespace) -> list[str]:
    from seqgen.inference import load

    generator = load(ckpt, task="translation", precision=args.precision)

    def budget(prompt_ids: list[int]) -> int:  # the generator caps it at the context's end
        return args.max_new_tokens or 2 * len(prompt_ids) + 10

    settings = dict(max_new_tokens=budget, num_beams=args.beams, batch_size=args.batch_size,
                    length_penalty=args.length_penalty, temperature=args.temperature,
                    top_p=args.top_p, seed=args.seed)  # fmt: skip
    if args.mbr_samples > 1:
        return generator.generate_mbr(
            sources, samples=args.mbr_samples, similarity=generator.task.mbr_similarity(),
            on_done=Progress("sampled", len(sources) * args.mbr_samples), **settings,
        )  # fmt: skip
    return generator.generate_many(
        sources, on_done=Progress("translated", len(sources)), **settings
    )


def parser() -> argparse.ArgumentParser:
    p = evaluation_parser(
        "translation",
        "Translate a source file and score it (sacreBLEU BLEU and chrF), or score a "
        "hypotheses file.",
        "--hypotheses",
        "Score this file (one translation per line).",
    )
    p.add_argument("--source", help="Source sentences, one per line (with --ckpt).")
    p.add_argument("--reference", required=True, help="Reference translations, one per line.")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="Longest translation in tokens (default: 2 x prompt + 10).")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=64,
                   help="Sentences (or MBR samples) decoded together without beams.")  # fmt: skip
    add_sampling_options(p, "sentence chrF")
    p.add_argument("--output", help="Write the translations here, one per line.")
    return p


def main(argv: list[str]) -> dict[str, Any]:
    cli = parser()
    args = cli.parse_args(argv)
    if args.beams < 1:
        raise DataError(f"--beams must be >= 1, got {args.beams}")
    check_sampling(cli, args)
    references = read_lines(Path(args.reference))
    if args.ckpt:
        if not args.source:
            raise DataError("--ckpt needs --source (the sentences to translate)")
        sources = read_lines(Path(args.source))
        if len(sources) != len(references):
            raise DataError(f"{args.source} has {len(sources)} lines, {args.reference} has "
                            f"{len(references)}")  # fmt: skip
        sources, references = sources[: args.limit], references[: args.limit]
        started = time.perf_counter()
        hypotheses = translate(args.ckpt, sources, args)
        # one line each for every reader (\r, \x1e, U+2028... also end lines for some)
        hypotheses = [" ".join(h.splitlines()) for h in hypotheses]
        seconds = time.perf_counter() - started
    else:
        hypotheses = read_lines(Path(args.hypotheses))
        if len(hypotheses) != len(references):
            raise DataError(f"{args.hypotheses} has {len(hypotheses)} lines, {args.reference} "
                            f"has {len(references)}")  # fmt: skip
        hypotheses, references = hypotheses[: args.limit], references[: args.limit]
        seconds = None
    report = score(hypotheses, references)
    if seconds is not None:
        report.update(decode_seconds=seconds, sentences_per_second=len(sources) / seconds,
                      beams=args.beams, checkpoint=args.ckpt, temperature=args.temperature,
                      top_p=args.top_p, mbr_samples=args.mbr_samples, seed=args.seed)  # fmt: skip
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text("".join(h + "\n" for h in hypotheses))
    write_json(args.report, report)
    print("| metric | score |\n|---|---|")
    print(f"| BLEU | {report['bleu']:.2f} |\n| chrF | {report['chrf']:.2f} |")
    print(f"\n{report['bleu_signature']}\n{report['chrf_signature']}")
    return report
