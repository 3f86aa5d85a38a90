"""Do the note rules help? Each checkpoint continues every performance of its own split
(`dev`, where such choices are made) with `--rules all`, with `--rules valid` (the model
alone: `all` less its hold limits), and with `--quantiles`, `all` with the hold limits at
other quantiles of the checkpoint's training notes (`hold_quantile_Q`; the checkpoint
stores those of HOLD_QUANTILE), from the same prompts and sampling seed; a paired
bootstrap over the performances, averaged over the checkpoints (several independently
trained models), gives how much each arm's mean overlap with what the performer played
exceeds that of `all`, with a 95% interval.

With `--baseline` (one per `--ckpt`: models trained another way, say for a shorter budget),
each arm of the K-th `--ckpt` is also paired with the same arm of the K-th baseline on the
same performances (`ARM_minus_baseline`): how much the change to the model moved the music,
with the rules and without; and each other arm with the baseline's `all`
(`ARM_minus_baseline_all`): whether the changed model plays as well alone as the
baseline does with the rules.

With `--performances_of C`, every model plays the `--split` performances of checkpoint C
instead of its own: models trained on other data (say, two corpora together) scored on
the same performances as the models of one corpus.

With `--temperatures` and `--top_ps`, `all` sampled otherwise than at the task's
temperature from the whole distribution (`temperature_T`, `top_p_P`): where sampling is
decided.

    python -m benchmarks.music_rules --ckpt runs/bench/pop909/seed1 \
        --ckpt runs/bench/pop909/seed2 --ckpt runs/bench/pop909/seed3 --split dev \
        --report runs/bench/music_rules_pop909.json
    python -m benchmarks.music_rules --ckpt ... --arms --quantiles 0.9 0.93 0.98
    python -m benchmarks.music_rules --ckpt ... --arms --temperatures 0.9 0.95 --top_ps 0.98
    python -m benchmarks.music_rules --ckpt runs/long/seed1 --baseline runs/short/seed1 ...
    python -m benchmarks.music_rules --ckpt runs/both/seed1 --baseline runs/asap/seed1 \
        --performances_of runs/asap/seed1 ...
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
TEMPERATURE_ARM = "temperature_"
TOP_P_ARM = "top_p_"


def play_arm(generator, performances: list, arm: str, args: argparse.Namespace, train: list | None):
    """`play` as `arm` says: `hold_quantile_Q` is `all` with the hold limits at quantile Q
    of the `train`ing performances' notes; `temperature_T` and `top_p_P` are `all` sampled
    at temperature T or from the nucleus of probability P."""
    processor, options = None, {}
    if arm.startswith(QUANTILE_ARM):
        quantile = float(arm.removeprefix(QUANTILE_ARM))
        processor = partial(NoteRules, limits=hold_limits(train, quantile))
    elif arm.startswith(TEMPERATURE_ARM):
        options["temperature"] = float(arm.removeprefix(TEMPERATURE_ARM))
    elif arm.startswith(TOP_P_ARM):
        options["top_p"] = float(arm.removeprefix(TOP_P_ARM))
    rules = "valid" if arm == "valid" else "all"
    return play(
        generator,
        performances,
        args.prompt_seconds,
        args.seconds,
        args.seed,
        rules,
        processor,
        **options,
    )


def fingerprint(performances: list) -> list[bytes]:
    """Which performances these are, to check that two models played the same ones."""
    return [notes.pitch.tobytes() + notes.start.tobytes() for notes in performances]


def split_performances(ckpt: str, split: str) -> list:
    """The `split` performances of the data `ckpt` trained with."""
    return held_out(MusicEval(ckpt=ckpt, split=split), load(ckpt, task="music"))[0]


def model_arms(
    ckpt: str,
    arms: list[str],
    args: argparse.Namespace,
    compared_with: list | None = None,
    performances: list | None = None,
) -> tuple[list, dict, dict]:
    """The performances played (`performances`, else the checkpoint's own held-out ones),
    what it played in each arm (`all` first) and its figures (per arm, the mean overlap and
    each statistic's). With `compared_with` (another model's performances) a different split
    is refused before anything is played."""
    generator = load(ckpt, task="music")
    if performances is None:
        performances, _ = held_out(MusicEval(ckpt=ckpt, split=args.split), generator)
    if compared_with is not None and fingerprint(performances) != fingerprint(compared_with):
        raise SystemExit(
            f"{ckpt} holds out other {args.split} performances than the model it is compared "
            "with: compare models trained on one split, or give --performances_of"
        )
    train = recorded_task(generator).performances(["train"])["train"] if args.quantiles else None
    played = {arm: play_arm(generator, performances, arm, args, train) for arm in arms}
    figures = {"ckpt": ckpt, "performances": len(played["all"].real)}
    for arm, found in played.items():
        overlaps = overlap(found.played, found.real)
        figures[f"mean_overlap_{arm}"] = overlaps.pop("mean")
        figures.update({f"{name}_overlap_{arm}": value for name, value in overlaps.items()})
        figures[f"crowded_fraction_{arm}"] = failures(found.played)["crowded_fraction"]
    figures["crowded_fraction_real"] = failures(played["all"].real)["crowded_fraction"]
    print(markdown_table(["figure", "value"], [[k, v] for k, v in figures.items()]))
    return performances, played, figures


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
    parser.add_argument(
        "--temperatures", nargs="*", type=float, default=[], help="temperatures against all's"
    )
    parser.add_argument(
        "--top_ps", nargs="*", type=float, default=[], help="nucleus sampling against all"
    )
    parser.add_argument(
        "--baseline",
        action="append",
        default=[],
        help="a checkpoint each --ckpt is compared with, arm by arm, in order",
    )
    parser.add_argument(
        "--performances_of",
        help="a checkpoint whose --split performances every model plays (default: each its own)",
    )
    parser.add_argument("--report", help="JSON report")
    args = parse_args(parser, argv)
    if any(not 0 < q <= 1 for q in args.quantiles):
        parser.error(f"quantiles must be in (0, 1], got {args.quantiles}")
    if any(t <= 0 for t in args.temperatures):
        parser.error(f"temperatures must be above 0, got {args.temperatures}")
    if any(not 0 < p < 1 for p in args.top_ps):
        parser.error(f"top_ps must be in (0, 1), got {args.top_ps}")
    args.arms = [
        *args.arms,
        *(f"{QUANTILE_ARM}{q:g}" for q in args.quantiles),
        *(f"{TEMPERATURE_ARM}{t:g}" for t in args.temperatures),
        *(f"{TOP_P_ARM}{p:g}" for p in args.top_ps),
    ]
    if args.baseline and len(args.baseline) != len(args.ckpt):
        parser.error(f"{len(args.baseline)} --baseline for {len(args.ckpt)} --ckpt: give one each")
    if not args.arms and not args.baseline:
        parser.error(
            "no arm to compare with all: give --arms, --quantiles, --temperatures or --top_ps"
        )
    arms = ["all", *args.arms]
    pairs: dict[str, list] = {f"{arm}_minus_all": [] for arm in args.arms}
    pairs.update({f"{arm}_minus_baseline": [] for arm in arms if args.baseline})
    pairs.update({f"{arm}_minus_baseline_all": [] for arm in args.arms if args.baseline})
    models, baselines = [], []
    shared = split_performances(args.performances_of, args.split) if args.performances_of else None
    for k, ckpt in enumerate(args.ckpt):
        performances, played, figures = model_arms(ckpt, arms, args, performances=shared)
        models.append(figures)
        for arm in args.arms:
            pairs[f"{arm}_minus_all"].append((played["all"], played[arm]))
        if args.baseline:
            _, before, figures = model_arms(
                args.baseline[k], arms, args, performances, performances=shared
            )
            baselines.append(figures)
            for arm in arms:
                pairs[f"{arm}_minus_baseline"].append((before[arm], played[arm]))
            for arm in args.arms:
                pairs[f"{arm}_minus_baseline_all"].append((before["all"], played[arm]))
    found = {key: paired_difference(pair, args.samples, args.seed) for key, pair in pairs.items()}
    report = write_report(
        args.report,
        {
            "split": args.split,
            "performances_of": args.performances_of,
            "models": models,
            "baselines": baselines,
            **found,
            "seed": args.seed,
        },
    )
    print(
        f"\nmean overlap, paired over {models[0]['performances']} {args.split} "
        f"performances and {len(models)} models:"
    )
    for key, value in found.items():
        print(f"{key}: {value['difference']:+.4f} [{value['low']:+.4f}, {value['high']:+.4f}]")
    print(report["cpu"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
