"""`seqgen evaluate --task music`: a checkpoint's negative log-likelihood on held-out MIDI
(per event and per second of music), and/or statistics of generated MIDI against a
reference set: the overlapping area of their pitch-class, velocity, note-density,
inter-onset-interval, note-duration and polyphony distributions (1 = identical, 0 =
disjoint), and plain failure counts (notes held too long, long silences, crowded chords),
which a listener hears first and the distributions can hide."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from seqgen.errors import DataError
from seqgen.evaluation import EvalConfig, stream_nll, write_json
from seqgen.tables import markdown_table
from seqgen_tasks.music.data import event_stream, load_corpus, total_seconds
from seqgen_tasks.music.events import STEPS_PER_SECOND, Notes, velocity_bin

DENSITY_WINDOW = 5 * STEPS_PER_SECOND  # note density is counted in 5-second windows
DENSITY_BINS = np.append(np.arange(0.0, 40.5, 0.5), np.inf)  # onsets per second
IOI_BINS = np.append(np.geomspace(0.01, 4.0, 41), np.inf)  # seconds, log-spaced
IOI_BINS[0] = 0.0
DURATION_BINS = np.append(np.geomspace(0.01, 16.0, 41), np.inf)  # seconds, log-spaced
DURATION_BINS[0] = 0.0
MAX_POLYPHONY = 20  # notes sounding at once; more share the last bin


@dataclass(kw_only=True)
class MusicEval(EvalConfig):
    """A checkpoint's negative log-likelihood on held-out MIDI (ckpt with data), and/or the
    statistics of generated MIDI against a reference set (generated with reference)."""

    data: str | None = None
    """Held-out MIDI to score ckpt on: a directory, a file, a .txt list or a dataset."""
    split: str = "test"
    """Dataset split of data (datasets only)."""
    generated: str | None = None
    """Generated MIDI to compare with reference."""
    reference: str | None = None
    """Reference MIDI (e.g. the held-out set)."""
    midi_column: str = "midi"
    """Column of MIDI bytes in datasets."""
    cache_dir: str | None = None
    """Encoded-MIDI cache (default: ~/.cache/seqgen/midi)."""
    long_note_seconds: float = 4.0
    """Failure count: notes sounding longer than this (sustain pedal applied)."""
    silence_seconds: float = 3.0
    """Failure count: silences longer than this, between the first onset and last release."""
    crowded_notes: int = 10
    """Failure count: the fraction of time with more notes than this sounding."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.long_note_seconds <= 0 or self.silence_seconds <= 0 or self.crowded_notes < 1:
            raise ValueError("long_note_seconds and silence_seconds must be > 0, crowded_notes "
                             ">= 1")  # fmt: skip
        if bool(self.ckpt) != bool(self.data) or bool(self.generated) != bool(self.reference):
            raise ValueError("give ckpt with data (likelihood), and/or generated with reference "
                             "(statistics)")  # fmt: skip
        if not (self.ckpt or self.generated):
            raise ValueError("nothing to evaluate: give ckpt and data, or generated and "
                             "reference")  # fmt: skip


def corpus(source: str, args: MusicEval, split: str = "train") -> tuple[list[Notes], dict]:
    performances, report = load_corpus(
        source, args.cache_dir, midi_column=args.midi_column, split=split
    )
    if not performances:
        raise DataError(f"{source}: no readable MIDI with notes ({len(report['skipped'])} skipped)")
    return performances, report


def likelihood(args: MusicEval) -> dict[str, Any]:
    from seqgen.inference import load

    generator = load(args.ckpt, task="music", precision=args.precision)
    tokenizer = generator.tokenizer
    performances, found = corpus(args.data, args, args.split)
    stream = event_stream(performances, tokenizer.bos_id, tokenizer.eos_id)
    started = time.perf_counter()
    _, nll = stream_nll(generator.model, stream, tokenizer.pad_id, args.batch_size)
    nats = nll.sum().item()
    seconds = total_seconds(performances)
    return {
        "nll_per_event": nats / len(nll),
        "perplexity": math.exp(nats / len(nll)),
        "nll_per_second": nats / seconds,
        "events": len(nll),
        "music_seconds": seconds,
        "files": found["files"],
        "skipped": found["skipped"],
        "seconds": time.perf_counter() - started,
        "checkpoint": str(generator.path),
    }


def sounding(notes: Notes) -> np.ndarray:
    """Notes sounding at each 10 ms step from the first onset to the last release."""
    first = int(notes.start.min())
    change = np.zeros(int(notes.end.max()) - first + 1, dtype=np.int64)
    np.add.at(change, notes.start - first, 1)
    np.add.at(change, notes.end - first, -1)
    return np.cumsum(change)[:-1]


def features(performances: list[Notes]) -> dict[str, np.ndarray]:
    """Normalised histograms of a set of performances (notes in 10 ms steps); polyphony
    (notes sounding at once, 0 = silence) is weighted by time."""
    pitch = np.concatenate([p.pitch for p in performances])
    velocity = np.concatenate([p.velocity for p in performances])
    durations = np.concatenate([p.end - p.start for p in performances]) / STEPS_PER_SECOND
    density, ioi, polyphony = [], [], []
    for p in performances:
        onsets = np.unique(p.start)
        ioi.append(np.diff(onsets) / STEPS_PER_SECOND)
        windows = max(1, -(-int(p.end.max()) // DENSITY_WINDOW))
        counts = np.bincount(p.start // DENSITY_WINDOW, minlength=windows)
        density.append(counts / (DENSITY_WINDOW / STEPS_PER_SECOND))
        polyphony.append(np.minimum(sounding(p), MAX_POLYPHONY))
    raw = {
        "pitch_class": np.bincount(pitch % 12, minlength=12),
        "velocity": np.bincount(velocity_bin(velocity) - 1, minlength=32),
        "note_density": np.histogram(np.concatenate(density), DENSITY_BINS)[0],
        "ioi": np.histogram(np.concatenate(ioi), IOI_BINS)[0],
        "duration": np.histogram(durations, DURATION_BINS)[0],
        "polyphony": np.bincount(np.concatenate(polyphony), minlength=MAX_POLYPHONY + 1),
    }
    return {k: v / max(1, v.sum()) for k, v in raw.items()}


def failures(performances: list[Notes], long_note_seconds: float = 4.0,
             silence_seconds: float = 3.0, crowded_notes: int = 10
             ) -> dict[str, float]:  # fmt: skip
    """What a listener hears first: the fraction of notes longer than long_note_seconds,
    silences longer than silence_seconds per minute of music, and the fraction of time with
    more than crowded_notes sounding."""
    durations = np.concatenate([p.end - p.start for p in performances]) / STEPS_PER_SECOND
    silences, crowded, steps = 0, 0, 0
    for p in performances:
        count = sounding(p)
        silent = np.concatenate([[0], (count == 0).astype(np.int8), [0]])
        edges = np.flatnonzero(np.diff(silent))  # starts and ends of silent stretches
        lengths = (edges[1::2] - edges[::2]) / STEPS_PER_SECOND
        silences += int((lengths > silence_seconds).sum())
        crowded += int((count > crowded_notes).sum())
        steps += len(count)
    minutes = steps / STEPS_PER_SECOND / 60
    return {
        "long_notes_fraction": float((durations > long_note_seconds).mean()),
        "silences_per_minute": silences / max(minutes, 1e-9),
        "crowded_fraction": crowded / max(steps, 1),
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
    ours, theirs = features(generated), features(reference)
    overlap = {k: float(np.minimum(ours[k], theirs[k]).sum()) for k in ours}
    limits = (args.long_note_seconds, args.silence_seconds, args.crowded_notes)
    return {
        "overlap": overlap,
        "mean_overlap": float(np.mean(list(overlap.values()))),
        "failures": {"generated": failures(generated, *limits),
                     "reference": failures(reference, *limits)},  # fmt: skip
        "generated": summary(generated),
        "reference": summary(reference),
    }


def evaluate(args: MusicEval) -> dict[str, Any]:
    report: dict[str, Any] = {}
    rows: list[tuple[str, str]] = []  # printed once everything is computed
    if args.ckpt:
        report["likelihood"] = likelihood(args)
        rows += [(key, f"{report['likelihood'][key]:.4f}")
                 for key in ("nll_per_event", "perplexity", "nll_per_second")]  # fmt: skip
    if args.generated:
        report["statistics"] = compare(args)
        rows += [(f"overlap: {key}", f"{value:.3f}")
                 for key, value in report["statistics"]["overlap"].items()]  # fmt: skip
        rows.append(("overlap: mean", f"{report['statistics']['mean_overlap']:.3f}"))
        found = report["statistics"]["failures"]
        labels = {
            "long_notes_fraction": f"notes longer than {args.long_note_seconds:g} s",
            "silences_per_minute": f"silences over {args.silence_seconds:g} s per minute",
            "crowded_fraction": f"time with over {args.crowded_notes} notes sounding",
        }
        rows += [(f"{label} (generated / reference)",
                  f"{found['generated'][key]:.3f} / {found['reference'][key]:.3f}")
                 for key, label in labels.items()]  # fmt: skip
    print(markdown_table(["metric", "value"], rows))
    if args.ckpt:
        found = report["likelihood"]
        print(
            f"\n{found['events']:,} events, {found['music_seconds']:,.0f} s of music in "
            f"{found['files'] - len(found['skipped'])} files of {args.data} (NLL in nats)"
        )
    write_json(args.report, report)
    return report
