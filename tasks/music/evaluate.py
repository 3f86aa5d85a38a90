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
from seqgen_tasks.music.generate import Rules
from seqgen_tasks.music.splits import HELD_OUT
from seqgen_tasks.music.statistics import (
    CROWDED_NOTES,
    LONG_NOTE_SECONDS,
    SHORT_NOTE_SECONDS,
    SILENCE_SECONDS,
    failures,
    overlap,
)


@dataclass(kw_only=True)
class MusicEval(DecodingEval):
    """A checkpoint's negative log-likelihood on held-out MIDI (ckpt with data), its
    continuations of that MIDI against what was played (with continue_seconds), and/or the
    statistics of generated MIDI against a reference set (generated with reference)."""

    data: str | None = None
    """Held-out MIDI to score ckpt on: a directory, a file, a .txt list or a dataset
    (default: the checkpoint's own `split`, as its training config defines it)."""
    split: str = "test"
    """Without data: the checkpoint's `test` (data.test, or the test pieces carved out of
    data.train; never read by training) or `dev` (what it validated on). With a dataset:
    its split."""
    generated: str | None = None
    """Generated MIDI to compare with reference."""
    reference: str | None = None
    """Reference MIDI (e.g. the held-out set)."""
    midi_column: str = "midi"
    """Column of MIDI bytes in datasets."""
    continue_seconds: float | None = None
    """Prompt ckpt with the first prompt_seconds of each performance of data, let it play
    this many seconds on, and compare with what was played next (statistics with bootstrap
    intervals, and the NLL of the real continuation)."""
    prompt_seconds: float = 10.0
    """Seconds of each performance given as the prompt (with continue_seconds)."""
    bootstrap_samples: int = 200
    """Resamples of the performances for the continuations' 95% intervals."""
    rules: Rules = "all"
    """How continuations keep the notes playable, as `seqgen generate --rules` does: `valid`
    releases only sounding notes; `all` also applies the checkpoint's note-length limits."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.continue_seconds is not None and (
            not self.ckpt or self.continue_seconds <= 0 or self.prompt_seconds <= 0
        ):
            raise ValueError(
                "continue_seconds needs ckpt and data, and continue_seconds and prompt_seconds > 0"
            )
        if self.bootstrap_samples < 1:
            raise ValueError(f"bootstrap_samples must be >= 1, got {self.bootstrap_samples}")
        if (self.data and not self.ckpt) or bool(self.generated) != bool(self.reference):
            raise ValueError(
                "give ckpt (likelihood, on data or its own split), and/or generated with "
                "reference (statistics)"
            )
        if self.ckpt and not self.data and self.split not in HELD_OUT:
            raise ValueError(f"split must be dev or test without data, got {self.split!r}")
        if not (self.ckpt or self.generated):
            raise ValueError("nothing to evaluate: give ckpt and data, or generated and reference")


def corpus(source: str, args: MusicEval, split: str = "train") -> tuple[list[Notes], dict]:
    performances, report = load_corpus(source, args.midi_column, split)
    if not performances:
        raise DataError(f"{source}: no readable MIDI with notes ({len(report['skipped'])} skipped)")
    return performances, report


def held_out(args: MusicEval, generator) -> tuple[list[Notes], dict]:
    """The checkpoint's own dev or test performances, from the data config it trained with."""
    recorded = (generator.meta.get("run_config") or {}).get("data")
    if not isinstance(recorded, dict):
        raise DataError(f"{args.ckpt}: the checkpoint does not record its data; give --data")
    config = generator.task.data_config
    data = config(**known_options(config, recorded))
    task = type(generator.task)(data)
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


def compare(args: MusicEval) -> dict[str, Any]:
    generated, _ = corpus(args.generated, args)
    reference, _ = corpus(args.reference, args)
    found = overlap(generated, reference)
    mean = found.pop("mean")
    return {
        "overlap": found,
        "mean_overlap": mean,
        "failures": {"generated": failures(generated), "reference": failures(reference)},
        "generated": summary(generated),
        "reference": summary(reference),
    }


def evaluate(args: MusicEval) -> dict[str, Any]:
    report: dict[str, Any] = {}
    rows: list[tuple[str, str]] = []  # printed once everything is computed
    if args.ckpt:
        from seqgen.inference import load

        generator = load(args.ckpt, task="music", **args.load_options())
        if args.data:
            performances, found = corpus(args.data, args, args.split)
        else:
            performances, found = held_out(args, generator)
        performances = performances[: args.limit]
        report["likelihood"] = likelihood(args, generator, performances, found)
        rows += [
            (key, f"{report['likelihood'][key]:.4f}")
            for key in ("nll_per_event", "perplexity", "nll_per_second")
        ]
        if args.continue_seconds:
            found = continuations(
                generator,
                performances,
                args.prompt_seconds,
                args.continue_seconds,
                args.seed,
                args.bootstrap_samples,
                rules=args.rules,
                **args.generation_options(),
            )
            report["continuation"] = found
            rows += [
                (f"continuation overlap: {key}", f"{value:.3f} [{low:.3f}, {high:.3f}]")
                for (key, value), (low, high) in zip(
                    found["overlap"].items(), found["overlap_interval"].values(), strict=True
                )
            ]
            rows += [
                (
                    f"continuation {key} (generated / real)",
                    f"{found['failures']['generated'][key]:.3f} / "
                    f"{found['failures']['real'][key]:.3f}",
                )
                for key in found["failures"]["generated"]
            ]
            rows.append(
                ("NLL per event of the real continuation", f"{found['nll_per_event_real']:.4f}")
            )
            rows.append(
                ("notes released when held too long", str(found["released_when_held_too_long"]))
            )
            later = found["performer_later"]
            if later["overlap"] is not None:
                rows.append(
                    (
                        f"yardstick: the performer's next {args.continue_seconds:g} s, "
                        f"mean overlap ({later['performances']} performances)",
                        f"{later['overlap']['mean']:.3f}",
                    )
                )
    if args.generated:
        report["statistics"] = compare(args)
        rows += [
            (f"overlap: {key}", f"{value:.3f}")
            for key, value in report["statistics"]["overlap"].items()
        ]
        rows.append(("overlap: mean", f"{report['statistics']['mean_overlap']:.3f}"))
        found = report["statistics"]["failures"]
        labels = {
            "long_notes_fraction": f"notes longer than {LONG_NOTE_SECONDS:g} s",
            "short_notes_fraction": f"notes shorter than {SHORT_NOTE_SECONDS:g} s",
            "silences_per_minute": f"silences over {SILENCE_SECONDS:g} s per minute",
            "crowded_fraction": f"time with over {CROWDED_NOTES} notes sounding",
        }
        rows += [
            (
                f"{label} (generated / reference)",
                f"{found['generated'][key]:.3f} / {found['reference'][key]:.3f}",
            )
            for key, label in labels.items()
        ]
    print(markdown_table(["metric", "value"], rows))
    if args.ckpt:
        found = report["likelihood"]
        print(
            f"\n{found['events']:,} events, {found['music_seconds']:,.0f} s of music in "
            f"{found['files'] - len(found['skipped'])} files of {found['data']} (NLL in nats)"
        )
    write_json(args.report, report)
    return report
