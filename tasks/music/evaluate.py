"""`seqgen evaluate --task music`: a checkpoint's negative log-likelihood on held-out MIDI
(per event and per second of music) and, with --continue_seconds, its continuations of
that MIDI against what was played (`continuation`); and/or statistics of generated MIDI
against a reference set (`statistics`: the overlap of six histograms, failure counts)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from seqgen.errors import DataError
from seqgen.evaluation import DecodingEval, stream_nll, write_json
from seqgen.tables import markdown_table
from seqgen.tasks import known_options
from seqgen_tasks.music.continuation import continuations
from seqgen_tasks.music.data import event_stream, load_corpus, total_seconds
from seqgen_tasks.music.events import Notes
from seqgen_tasks.music.generate import MusicPlay
from seqgen_tasks.music.splits import HELD_OUT
from seqgen_tasks.music.statistics import (
    CROWDED_NOTES,
    LONG_NOTE_SECONDS,
    SHORT_NOTE_SECONDS,
    SILENCE_SECONDS,
    failures,
    overlap,
)

DEFAULT_PROMPT_SECONDS = 10.0  # of each held-out performance continued


@dataclass(kw_only=True)
class MusicEval(DecodingEval, MusicPlay):
    """A checkpoint's negative log-likelihood on held-out MIDI (the real music: data, or the
    checkpoint's own split), its continuations of that music against what was played (with
    seconds), and/or the statistics of generated MIDI against the real music."""

    data: str | None = None
    """The real music: held-out MIDI that ckpt is scored on and continues, and that
    generated is compared with: a directory, a file, a .txt list or a dataset (default: the
    checkpoint's own `split`, as its training config defines it)."""
    split: str = "test"
    """Without data: the checkpoint's `test` (data.test, or the test pieces carved out of
    data.train; never read by training) or `dev` (what it validated on). With a dataset:
    its split."""
    generated: str | None = None
    """Generated MIDI to compare with the real music (statistics of six histograms and
    failure counts)."""

    def __post_init__(self) -> None:
        DecodingEval.__post_init__(self)
        MusicPlay.__post_init__(self)
        if not (self.ckpt or self.generated):
            raise ValueError(
                "nothing to evaluate: give ckpt (scored on data or its own split) and/or "
                "generated (compared with data or the checkpoint's split)"
            )
        if not (self.ckpt or self.data):
            raise ValueError("generated is compared with the real music: give data or ckpt")
        if self.seconds is not None and not self.ckpt:
            raise ValueError("seconds continues the real music with a model: give ckpt")
        if self.ckpt and not self.data and self.split not in HELD_OUT:
            raise ValueError(f"split must be dev or test without data, got {self.split!r}")


def corpus(source: str, split: str = "train") -> tuple[list[Notes], dict]:
    performances, report = load_corpus(source, split)
    if not performances:
        raise DataError(f"{source}: no readable MIDI with notes ({len(report['skipped'])} skipped)")
    return performances, report


def recorded_task(generator):
    """The music task as the checkpoint's training configured its data (its run config)."""
    recorded = (generator.meta.get("run_config") or {}).get("data")
    if not isinstance(recorded, dict):
        raise DataError(f"{generator.path}: the checkpoint does not record its data; give --data")
    config = generator.task.data_config
    return type(generator.task)(config(**known_options(config, recorded)))


def held_out(args: MusicEval, generator) -> tuple[list[Notes], dict]:
    """The checkpoint's own dev or test performances, from the data config it trained with."""
    task = recorded_task(generator)
    try:
        performances = task.performances([args.split])[args.split]
    except DataError as err:
        raise DataError(f"{args.ckpt}: its {args.split} split: {err}; give --data") from None
    skipped = task.stats.get(f"{args.split}_skipped_files", [])
    return performances, {"files": len(performances) + len(skipped), "skipped": skipped}


def likelihood(
    args: MusicEval, generator, performances: list[Notes], found: dict
) -> dict[str, Any]:
    tokenizer = generator.tokenizer
    stream = event_stream(performances, tokenizer.bos_id, tokenizer.eos_id)
    started = time.perf_counter()
    _, nll = stream_nll(generator.model, stream, tokenizer.pad_id, args.batch_size, generator.state)
    nats = nll.sum().item()
    seconds = total_seconds(performances)
    return {
        "nll_per_event": nats / len(nll),
        "perplexity": math.exp(nats / len(nll)),
        "nll_per_second": nats / seconds,
        "events": len(nll),
        "music_seconds": seconds,
        "data": args.data or f"{args.split} split of the checkpoint's training data",
        "files": found["files"],
        "skipped": found["skipped"],
        "seconds": time.perf_counter() - started,
        "checkpoint": str(generator.path),
    }


def summary(performances: list[Notes]) -> dict[str, float]:
    seconds = total_seconds(performances)
    notes = sum(len(p) for p in performances)
    return {
        "files": len(performances),
        "seconds": seconds,
        "notes": notes,
        "notes_per_second": notes / max(seconds, 1e-9),
        "mean_velocity": float(np.mean(np.concatenate([p.velocity for p in performances]))),
    }


def compare(args: MusicEval, real: list[Notes]) -> dict[str, Any]:
    """The statistics of the generated MIDI against the `real` music."""
    generated, _ = corpus(args.generated)
    found = overlap(generated, real)
    mean = found.pop("mean")
    return {
        "overlap": found,
        "mean_overlap": mean,
        "failures": {"generated": failures(generated), "reference": failures(real)},
        "generated": summary(generated),
        "reference": summary(real),
    }


def continuation_rows(found: dict[str, Any], seconds: float) -> list[tuple[str, str]]:
    rows = [
        (f"continuation overlap: {key}", f"{value:.3f} [{low:.3f}, {high:.3f}]")
        for (key, value), (low, high) in zip(
            found["overlap"].items(), found["overlap_interval"].values(), strict=True
        )
    ]
    rows += [
        (
            f"continuation {key} (generated / real)",
            f"{found['failures']['generated'][key]:.3f} / {found['failures']['real'][key]:.3f}",
        )
        for key in found["failures"]["generated"]
    ]
    rows.append(("NLL per event of the real continuation", f"{found['nll_per_event_real']:.4f}"))
    rows.append(("notes released when held too long", str(found["released_when_held_too_long"])))
    later = found["performer_later"]
    if later["overlap"] is not None:
        rows.append(
            (
                f"yardstick: the performer's next {seconds:g} s, mean overlap "
                f"({later['performances']} performances)",
                f"{later['overlap']['mean']:.3f}",
            )
        )
    return rows


def statistics_rows(found: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [(f"overlap: {key}", f"{value:.3f}") for key, value in found["overlap"].items()]
    rows.append(("overlap: mean", f"{found['mean_overlap']:.3f}"))
    labels = {
        "long_notes_fraction": f"notes longer than {LONG_NOTE_SECONDS:g} s",
        "short_notes_fraction": f"notes shorter than {SHORT_NOTE_SECONDS:g} s",
        "silences_per_minute": f"silences over {SILENCE_SECONDS:g} s per minute",
        "crowded_fraction": f"time with over {CROWDED_NOTES} notes sounding",
    }
    failed = found["failures"]
    return rows + [
        (
            f"{label} (generated / real)",
            f"{failed['generated'][key]:.3f} / {failed['reference'][key]:.3f}",
        )
        for key, label in labels.items()
    ]


def evaluate(args: MusicEval) -> dict[str, Any]:
    report: dict[str, Any] = {}
    rows: list[tuple[str, str]] = []  # printed once everything is computed
    generator = None
    if args.ckpt:
        from seqgen.inference import load

        generator = load(args.ckpt, task="music", **args.load_options())
    if args.data:
        real, found = corpus(args.data, args.split)
    else:
        real, found = held_out(args, generator)
    real = real[: args.limit]
    if generator is not None:
        report["likelihood"] = likelihood(args, generator, real, found)
        rows += [
            (key, f"{report['likelihood'][key]:.4f}")
            for key in ("nll_per_event", "perplexity", "nll_per_second")
        ]
    if generator is not None and args.seconds:
        report["continuation"] = continuations(
            generator,
            real,
            args.prompt_seconds or DEFAULT_PROMPT_SECONDS,
            args.seconds,
            args.seed,
            args.bootstrap_samples,
            rules=args.rules,
            **args.generation_options(),
        )
        rows += continuation_rows(report["continuation"], args.seconds)
    if args.generated:
        report["statistics"] = compare(args, real)
        rows += statistics_rows(report["statistics"])
    print(markdown_table(["metric", "value"], rows))
    if args.ckpt:
        found = report["likelihood"]
        print(
            f"\n{found['events']:,} events, {found['music_seconds']:,.0f} s of music in "
            f"{found['files'] - len(found['skipped'])} files of {found['data']} (NLL in nats)"
        )
    write_json(args.report, report)
    return report
