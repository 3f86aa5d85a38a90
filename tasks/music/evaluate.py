"""`seqgen evaluate --task music`: a checkpoint's negative log-likelihood on held-out MIDI
(per event and per second of music), and/or statistics of generated MIDI against a
reference set: the overlapping area of their pitch-class, velocity, note-density and
inter-onset-interval distributions (1 = identical, 0 = disjoint)."""

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

    def __post_init__(self) -> None:
        super().__post_init__()
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


def features(performances: list[Notes]) -> dict[str, np.ndarray]:
    """Normalised histograms of a set of performances (notes in 10 ms steps)."""
    pitch = np.concatenate([p.pitch for p in performances])
    velocity = np.concatenate([p.velocity for p in performances])
    density, ioi = [], []
    for p in performances:
        onsets = np.unique(p.start)
        ioi.append(np.diff(onsets) / STEPS_PER_SECOND)
        windows = max(1, -(-int(p.end.max()) // DENSITY_WINDOW))
        counts = np.bincount(p.start // DENSITY_WINDOW, minlength=windows)
        density.append(counts / (DENSITY_WINDOW / STEPS_PER_SECOND))
    raw = {
        "pitch_class": np.bincount(pitch % 12, minlength=12),
        "velocity": np.bincount(velocity_bin(velocity) - 1, minlength=32),
        "note_density": np.histogram(np.concatenate(density), DENSITY_BINS)[0],
        "ioi": np.histogram(np.concatenate(ioi), IOI_BINS)[0],
    }
    return {k: v / max(1, v.sum()) for k, v in raw.items()}


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
    return {
        "overlap": overlap,
        "mean_overlap": float(np.mean(list(overlap.values()))),
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
    print(markdown_table(["metric", "value"], rows))
    if args.ckpt:
        found = report["likelihood"]
        print(
            f"\n{found['events']:,} events, {found['music_seconds']:,.0f} s of music in "
            f"{found['files'] - len(found['skipped'])} files of {args.data} (NLL in nats)"
        )
    write_json(args.report, report)
    return report
