"""Statistics of piano performances that a listener hears: normalised histograms of
pitch class, velocity, note density, inter-onset interval, note duration and polyphony, the
overlap of two sets' histograms (1 = identical, 0 = disjoint), and plain failure counts
(notes held too long, notes too short to sound, long silences, crowded chords). Notes are in
10 ms steps."""

from __future__ import annotations

import numpy as np

from seqgen_tasks.music.events import STEPS_PER_SECOND, Notes, velocity_bin

DENSITY_WINDOW = 5 * STEPS_PER_SECOND  # note density is counted in 5-second windows
DENSITY_BINS = np.append(np.arange(0.0, 40.5, 0.5), np.inf)  # onsets per second
IOI_BINS = np.append(np.geomspace(0.01, 4.0, 41), np.inf)  # seconds, log-spaced
IOI_BINS[0] = 0.0
DURATION_BINS = np.append(np.geomspace(0.01, 16.0, 41), np.inf)  # seconds, log-spaced
DURATION_BINS[0] = 0.0
MAX_POLYPHONY = 20  # notes sounding at once; more share the last bin


def sounding(notes: Notes) -> np.ndarray:
    """Notes sounding at each 10 ms step from the first onset to the last release."""
    first = int(notes.start.min())
    change = np.zeros(int(notes.end.max()) - first + 1, dtype=np.int64)
    np.add.at(change, notes.start - first, 1)
    np.add.at(change, notes.end - first, -1)
    return np.cumsum(change)[:-1]


def histograms(notes: Notes) -> dict[str, np.ndarray]:
    """Each statistic's histogram of one performance (notes in 10 ms steps), in counts;
    polyphony (notes sounding at once, 0 = silence) is weighted by time. A set's histogram
    is the sum of its performances' (`histogram_overlap` normalises it)."""
    counts = {
        "pitch_class": np.bincount(notes.pitch % 12, minlength=12),
        "velocity": np.bincount(velocity_bin(notes.velocity) - 1, minlength=32),
        "note_density": np.zeros(len(DENSITY_BINS) - 1, np.int64),
        "ioi": np.zeros(len(IOI_BINS) - 1, np.int64),
        "duration": np.histogram((notes.end - notes.start) / STEPS_PER_SECOND, DURATION_BINS)[0],
        "polyphony": np.zeros(MAX_POLYPHONY + 1, np.int64),
    }
    if len(notes):  # e.g. a window of a continuation in which nothing was played
        onsets = np.unique(notes.start)
        counts["ioi"] = np.histogram(np.diff(onsets) / STEPS_PER_SECOND, IOI_BINS)[0]
        windows = max(1, -(-int(notes.end.max()) // DENSITY_WINDOW))
        onsets_per_window = np.bincount(notes.start // DENSITY_WINDOW, minlength=windows)
        density = onsets_per_window / (DENSITY_WINDOW / STEPS_PER_SECOND)
        counts["note_density"] = np.histogram(density, DENSITY_BINS)[0]
        polyphony = np.minimum(sounding(notes), MAX_POLYPHONY)
        counts["polyphony"] = np.bincount(polyphony, minlength=MAX_POLYPHONY + 1)
    return counts


def histogram_table(performances: list[Notes]) -> dict[str, np.ndarray]:
    """Each statistic's histograms of the performances, one row each: (performances, bins)."""
    rows = [histograms(p) for p in performances or [Notes.empty()]]  # none: one empty row
    return {k: np.stack([row[k] for row in rows]) for k in rows[0]}


def _normalised(counts: np.ndarray) -> np.ndarray:
    """Counts (..., bins) -> each histogram over its total (all zeros stays all zeros)."""
    return counts / np.maximum(1, counts.sum(axis=-1, keepdims=True))


def histogram_overlap(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """The overlap of counts (..., bins) as histograms: 1 for the same shape, 0 for none."""
    return np.minimum(_normalised(ours), _normalised(theirs)).sum(axis=-1)


# What `failures` counts, fixed so that every report counts the same things
LONG_NOTE_SECONDS = 4.0  # a note held longer is heard as stuck
SHORT_NOTE_SECONDS = 0.05  # a note shorter is heard as a click
SILENCE_SECONDS = 3.0  # a longer silence inside a piece is heard as a gap
CROWDED_NOTES = 10  # more notes sounding at once is heard as a pile-up


def failures(
    performances: list[Notes],
    long_note_seconds: float = LONG_NOTE_SECONDS,
    silence_seconds: float = SILENCE_SECONDS,
    crowded_notes: int = CROWDED_NOTES,
    short_note_seconds: float = SHORT_NOTE_SECONDS,
) -> dict[str, float]:
    """What a listener hears first: the fraction of notes longer than long_note_seconds and
    of notes shorter than short_note_seconds (clicks rather than notes), silences longer
    than silence_seconds per minute of music, and the fraction of time with more than
    crowded_notes sounding."""
    durations = np.concatenate([p.end - p.start for p in performances]) / STEPS_PER_SECOND
    silences, crowded, steps = 0, 0, 0
    for p in (p for p in performances if len(p)):
        count = sounding(p)
        silent = np.concatenate([[0], (count == 0).astype(np.int8), [0]])
        edges = np.flatnonzero(np.diff(silent))  # starts and ends of silent stretches
        lengths = (edges[1::2] - edges[::2]) / STEPS_PER_SECOND
        silences += int((lengths > silence_seconds).sum())
        crowded += int((count > crowded_notes).sum())
        steps += len(count)
    minutes = steps / STEPS_PER_SECOND / 60
    return {
        "long_notes_fraction": int((durations > long_note_seconds).sum()) / max(len(durations), 1),
        "short_notes_fraction": int((durations < short_note_seconds).sum())
        / max(len(durations), 1),
        "silences_per_minute": silences / max(minutes, 1e-9),
        "crowded_fraction": crowded / max(steps, 1),
    }


def overlap(ours: list[Notes], theirs: list[Notes]) -> dict[str, float]:
    """Overlap of each statistic's histogram (1 = identical), and their mean."""
    a, b = histogram_table(ours), histogram_table(theirs)
    found = {k: float(histogram_overlap(a[k].sum(axis=0), b[k].sum(axis=0))) for k in a}
    return {**found, "mean": float(np.mean(list(found.values())))}


def resampled_overlap(
    ours: list[Notes], theirs: list[Notes], weights: np.ndarray
) -> dict[str, np.ndarray]:
    """`overlap` of many resamplings of paired performances at once, for a bootstrap: row r
    of `weights` (draws, performances) counts how often the r-th draw takes each pair."""
    if len(ours) != len(theirs) or weights.shape[-1] != len(ours):
        raise ValueError(
            f"{len(ours)} and {len(theirs)} performances for weights of {weights.shape[-1]}"
        )
    a, b = histogram_table(ours), histogram_table(theirs)
    found = {k: histogram_overlap(weights @ a[k], weights @ b[k]) for k in a}
    return {**found, "mean": np.mean(list(found.values()), axis=0)}


def bootstrap_weights(count: int, samples: int, seed: int) -> np.ndarray:
    """(samples, count): how often each of `count` items is drawn in each resampling with
    replacement (the draws of `numpy.random.default_rng(seed)`, one resampling at a time)."""
    rng = np.random.default_rng(seed)
    draws = [np.bincount(rng.integers(0, count, count), minlength=count) for _ in range(samples)]
    return np.stack(draws) if draws else np.zeros((0, count), np.int64)
