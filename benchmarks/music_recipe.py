"""A music recipe's figures on its test split, from several independently trained models:
the README's commands, repeated. Each model trains as `seqgen pretrain --config RECIPE
--seed K` does (the recipe's own budget; overrides after `--`, such as `--data.train DIR`),
then `seqgen evaluate --ckpt RUN --split test --seconds 30` scores it on the
recipe's test split (never read by training) with `--rules all` and with `--rules valid`.
The models differ more than the sampling seeds do, so the figures are their mean, min and max.

    python -m benchmarks.music_recipe --config configs/music/pop909.yaml --models 3 \
        --out runs/bench/pop909 --report runs/bench/music_pop909.json \
        -- --data.train ../shared/data/pop909

Figures per model: the dev NLL training validated on, the test NLL per event, and of the
30 s continuations of each test performance's first 10 s against what the performer played
next: the mean overlap of six statistics (and the performer's own next 30 s as the
yardstick, `mean_overlap_ratio` being the first over the second), the note-duration overlap,
and the time with more than 10 notes sounding (and in the real music).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path

from benchmarks.common import evaluate, parse_args, train, write_report
from seqgen.inference import load
from seqgen.tables import markdown_table
from seqgen_tasks.music.continuation import continuations
from seqgen_tasks.music.evaluate import MusicEval, held_out


def model_figures(run: Path, args: argparse.Namespace, trained: dict) -> dict[str, float]:
    """`seqgen evaluate --split test` with `--rules all` (the likelihood and the
    continuations), then the continuations alone with `--rules valid`: the likelihood of
    the same model on the same music is not computed twice."""
    found = evaluate(
        "music",
        ckpt=str(run),
        split="test",
        seconds=args.seconds,
        prompt_seconds=args.prompt_seconds,
        seed=1,
    )
    generator = load(str(run), task="music")
    test, _ = held_out(MusicEval(ckpt=str(run), split="test"), generator)
    arms = {
        "all": found["continuation"],
        "valid": continuations(
            generator, test, args.prompt_seconds, args.seconds, seed=1, rules="valid"
        ),
    }
    later = arms["all"]["performer_later"]["overlap"]["mean"]
    figures = {
        "steps": trained["steps"],
        "dev_nll_per_event": trained["val_loss"],
        "test_nll_per_event": found["likelihood"]["nll_per_event"],
        "test_performances": arms["all"]["performances"],
        "performer_later_mean_overlap": later,
        "crowded_fraction_real": arms["all"]["failures"]["real"]["crowded_fraction"],
    }
    for rules, continuation in arms.items():
        mean = continuation["overlap"]["mean"]
        figures[f"mean_overlap_{rules}"] = mean
        figures[f"mean_overlap_ratio_{rules}"] = mean / later
        figures[f"duration_overlap_{rules}"] = continuation["overlap"]["duration"]
        generated = continuation["failures"]["generated"]
        figures[f"crowded_fraction_{rules}"] = generated["crowded_fraction"]
    return figures


def trained_figures(run: Path) -> dict[str, float]:
    """The steps and dev NLL (training's last validation, as `seqgen evaluate --split dev`
    computes it) of a model trained before."""
    meta = json.loads((run / "final" / "config.json").read_text())
    dev = evaluate("music", ckpt=str(run), split="dev")
    return {"steps": meta["step"], "val_loss": dev["likelihood"]["nll_per_event"]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the recipe (configs/music/*.yaml)")
    parser.add_argument("--models", type=int, default=3, help="models trained, seeds 1..N")
    parser.add_argument("--out", default="runs/bench/music_recipe", help="where the runs go")
    parser.add_argument("--prompt_seconds", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument(
        "--trained",
        action="store_true",
        help="score the models already in --out (seed1..N), e.g. after the rules changed",
    )
    parser.add_argument("--report", help="JSON report")
    parser.add_argument("overrides", nargs="*", help="passed to seqgen pretrain, after --")
    args = parse_args(parser, argv)
    models = []
    for seed in range(1, args.models + 1):
        run = Path(args.out) / f"seed{seed}"
        if args.trained:
            models.append({"seed": seed, **model_figures(run, args, trained_figures(run))})
            continue
        trained = train(
            "pretrain",
            [
                "--config",
                args.config,
                *args.overrides,
                "--seed",
                str(seed),
                "--out_dir",
                str(run),
                "--overwrite",
                "true",
                "--train.progress_bar=false",
            ],
        )
        models.append({"seed": seed, **model_figures(run, args, trained)})
        print(markdown_table(["figure", f"seed {seed}"], [[k, v] for k, v in models[-1].items()]))
    keys = [key for key in models[0] if key != "seed"]
    summary = {
        key: {
            "mean": statistics.fmean(m[key] for m in models),
            "min": min(m[key] for m in models),
            "max": max(m[key] for m in models),
        }
        for key in keys
    }
    report = write_report(
        args.report,
        {"config": args.config, "overrides": args.overrides, "models": models, **summary},
    )
    rows = [
        [k, f"{v['mean']:.4g}", f"{v['min']:.4g}", f"{v['max']:.4g}"] for k, v in summary.items()
    ]
    print(markdown_table(["figure", "mean", "min", "max"], rows))
    print(f"\n{report['cpu']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
