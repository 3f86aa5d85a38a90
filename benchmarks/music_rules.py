"""Do the note-length rules help? Each checkpoint continues every performance of its own
split (`dev`, where such choices are made) twice, with `--rules all` and `--rules valid`, from
the same prompts and sampling seed; a paired bootstrap over the performances, averaged over
the checkpoints (several independently trained models), gives how much `valid` (the model
alone) exceeds `all` in mean overlap with what the performer played, with a 95% interval.

    python -m benchmarks.music_rules --ckpt runs/bench/pop909/seed1 \
        --ckpt runs/bench/pop909/seed2 --ckpt runs/bench/pop909/seed3 --split dev \
        --report runs/bench/music_rules_pop909.json
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from benchmarks.common import parse_args, write_report
from seqgen.inference import load
from seqgen.tables import markdown_table
from seqgen_tasks.music.continuation import paired_difference, play
from seqgen_tasks.music.evaluate import MusicEval, held_out
from seqgen_tasks.music.statistics import failures, overlap

RULES = ("all", "valid")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", action="append", required=True, help="a music checkpoint")
    parser.add_argument("--split", default="dev", choices=("dev", "test"))
    parser.add_argument("--prompt_seconds", type=float, default=10.0)
    parser.add_argument("--continue_seconds", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=1, help="the sampling seed of both arms")
    parser.add_argument("--samples", type=int, default=1000, help="bootstrap draws")
    parser.add_argument("--report", help="JSON report")
    args = parse_args(parser, argv)
    pairs, models = [], []
    for ckpt in args.ckpt:
        generator = load(ckpt, task="music")
        performances, _ = held_out(MusicEval(ckpt=ckpt, split=args.split), generator)
        arms = {
            rules: play(
                generator,
                performances,
                args.prompt_seconds,
                args.continue_seconds,
                args.seed,
                rules,
            )
            for rules in RULES
        }
        pairs.append((arms["all"], arms["valid"]))
        figures = {"ckpt": ckpt, "performances": len(arms["all"].real)}
        for rules, found in arms.items():
            figures[f"mean_overlap_{rules}"] = overlap(found.played, found.real)["mean"]
            figures[f"crowded_fraction_{rules}"] = failures(found.played)["crowded_fraction"]
        figures["crowded_fraction_real"] = failures(arms["all"].real)["crowded_fraction"]
        models.append(figures)
        print(markdown_table(["figure", "value"], [[k, v] for k, v in figures.items()]))
    found = paired_difference(pairs, args.samples, args.seed)
    report = write_report(
        args.report,
        {"split": args.split, "models": models, "valid_minus_all": found, "seed": args.seed},
    )
    print(
        f"\nmean overlap, valid - all, paired over {models[0]['performances']} {args.split} "
        f"performances and {len(models)} models: {found['difference']:+.4f} "
        f"[{found['low']:+.4f}, {found['high']:+.4f}]\n{report['cpu']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
