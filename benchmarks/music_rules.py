"""Do the note rules help? Each checkpoint continues every performance of its own split
(`dev`, where such choices are made) with `--rules all`, with `--rules valid` (the model
alone: `all` less its hold limits), and with `--quantiles`, `all` with the hold limits at
other quantiles of the checkpoint's training notes (`hold_quantile_Q`; the checkpoint
stores those of HOLD_QUANTILE), from the same prompts and sampling seed; a paired
bootstrap over the performances, averaged over the checkpoints (several independently
trained models), gives how much each arm's mean overlap with what the performer played
exceeds that of `all`, with a 95% interval.

    python -m benchmarks.music_rules --ckpt runs/bench/pop909/seed1 \
        --ckpt runs/bench/pop909/seed2 --ckpt runs/bench/pop909/seed3 --split dev \
        --report runs/bench/music_rules_pop909.json
    python -m benchmarks.music_rules --ckpt ... --arms --quantiles 0.9 0.93 0.98
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from functools import partial

from benchmarks.common import parse_args, write_report
from seqgen.inference import load
from seqgen.tables import markdown_table
from seqgen_tasks.music.continuation import paired_difference, play
from seqgen_tasks.music.evaluate import MusicEval, held_out, recorded_task
from seqgen_tasks.music.generate import NoteRules, hold_limits
from seqgen_tasks.music.statistics import failures, overlap

ARMS = ("valid",)
"""Compared with `all`."""


QUANTILE_ARM = "hold_quantile_"


def play_arm(generator, performances: list, arm: str, args: argparse.Namespace, train: list | None):
    """`play` as `arm` says: `hold_quantile_Q` is `all` with the hold limits at quantile Q
    of the `train`ing performances' notes."""
    processor = None
    if arm.startswith(QUANTILE_ARM):
        quantile = float(arm.removeprefix(QUANTILE_ARM))
        processor = partial(NoteRules, limits=hold_limits(train, quantile))
    rules = "valid" if arm == "valid" else "all"
    return play(
        generator, performances, args.prompt_seconds, args.seconds, args.seed, rules, processor
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", action="append", required=True, help="a music checkpoint")
    parser.add_argument("--split", default="dev", choices=("dev", "test"))
    parser.add_argument("--prompt_seconds", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=1, help="the sampling seed of both arms")
    parser.add_argument("--samples", type=int, default=1000, help="bootstrap draws")
    parser.add_argument(
        "--arms", nargs="*", choices=ARMS, default=list(ARMS), help="the arms against all"
    )
    parser.add_argument(
        "--quantiles", nargs="*", type=float, default=[], help="hold-limit quantiles against all"
    )
    parser.add_argument("--report", help="JSON report")
    args = parse_args(parser, argv)
    if any(not 0 < q <= 1 for q in args.quantiles):
        parser.error(f"quantiles must be in (0, 1], got {args.quantiles}")
    args.arms = [*args.arms, *(f"{QUANTILE_ARM}{q:g}" for q in args.quantiles)]
    if not args.arms:
        parser.error("no arm to compare with all: give --arms or --quantiles")
    pairs: dict[str, list] = {arm: [] for arm in args.arms}
    models = []
    for ckpt in args.ckpt:
        generator = load(ckpt, task="music")
        performances, _ = held_out(MusicEval(ckpt=ckpt, split=args.split), generator)
        train = (
            recorded_task(generator).performances(["train"])["train"] if args.quantiles else None
        )
        arms = {
            arm: play_arm(generator, performances, arm, args, train) for arm in ("all", *args.arms)
        }
        for arm in args.arms:
            pairs[arm].append((arms["all"], arms[arm]))
        figures = {"ckpt": ckpt, "performances": len(arms["all"].real)}
        for arm, found in arms.items():
            figures[f"mean_overlap_{arm}"] = overlap(found.played, found.real)["mean"]
            figures[f"crowded_fraction_{arm}"] = failures(found.played)["crowded_fraction"]
        figures["crowded_fraction_real"] = failures(arms["all"].real)["crowded_fraction"]
        models.append(figures)
        print(markdown_table(["figure", "value"], [[k, v] for k, v in figures.items()]))
    found = {
        f"{arm}_minus_all": paired_difference(pairs[arm], args.samples, args.seed) for arm in pairs
    }
    report = write_report(
        args.report, {"split": args.split, "models": models, **found, "seed": args.seed}
    )
    print(
        f"\nmean overlap against all, paired over {models[0]['performances']} {args.split} "
        f"performances and {len(models)} models:"
    )
    for key, value in found.items():
        print(f"{key}: {value['difference']:+.4f} [{value['low']:+.4f}, {value['high']:+.4f}]")
    print(report["cpu"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
