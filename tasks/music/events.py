"""Piano performances <-> Magenta / Music Transformer performance events.

    ids   0-127  NOTE_ON pitch        128-255  NOTE_OFF pitch
        256-355  TIME_SHIFT 1-100 steps of 10 ms     356-387  VELOCITY bin 1-32

A performance is first reduced to notes (every non-drum instrument merged, the sustain pedal
applied), quantised to 10 ms steps (round half up; a note whose end rounds onto its start
lasts one step), then written as events ordered by step, NOTE_OFFs before NOTE_ONs within a
step, each kind by pitch (onsets of one pitch at one step by velocity). A VELOCITY event
precedes a NOTE_ON whose velocity bin differs from the previous one's. Encoding is
vectorised with numpy; MIDI files are parsed by symusic for bulk work or by pretty_midi (the
user-facing objects), and both give the same events.

Several notes of one pitch may overlap; the events cannot say which release belongs to which
onset, so decoding pairs them first in, first out, and so does `canonical_notes`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

NOTE_ON, NOTE_OFF, TIME_SHIFT, VELOCITY = 0, 128, 255, 355  # id = base + value
NUM_EVENTS = 388
MAX_SHIFT = 100  # steps
STEPS_PER_SECOND = 100
VELOCITY_BINS = 32
DEFAULT_VELOCITY = 64  # for notes decoded before any VELOCITY event
SUSTAIN_CC, SUSTAIN_THRESHOLD = 64, 64


def is_note_on(ids: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Where the ids (a numpy array or a torch tensor) are NOTE_ON events."""
    return (ids >= NOTE_ON) & (ids < NOTE_ON + 128)


def is_note_off(ids: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Where the ids (a numpy array or a torch tensor) are NOTE_OFF events."""
    return (ids >= NOTE_OFF) & (ids < NOTE_OFF + 128)


def is_time_shift(ids: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Where the ids (a numpy array or a torch tensor) are TIME_SHIFT events."""
    return (ids > TIME_SHIFT) & (ids <= TIME_SHIFT + MAX_SHIFT)


@dataclass
class Notes:
    """Parallel arrays, one entry per note (times in seconds or steps)."""

    pitch: np.ndarray
    start: np.ndarray
    end: np.ndarray
    velocity: np.ndarray

    def __len__(self) -> int:
        return len(self.pitch)

    @classmethod
    def empty(cls) -> Notes:
        return cls(*(np.zeros(0, dtype=np.int64) for _ in range(4)))

    def sorted(self) -> Notes:
        order = np.lexsort((self.velocity, self.end, self.pitch, self.start))
        return Notes(self.pitch[order], self.start[order], self.end[order], self.velocity[order])


def velocity_bin(velocity: np.ndarray) -> np.ndarray:
    """MIDI velocity 1-127 -> bin 1-32."""
    return (np.clip(velocity, 1, 127) - 1) // 4 + 1


def bin_velocity(bins: np.ndarray) -> np.ndarray:
    """Bin 1-32 -> the velocity it decodes to."""
    return 1 + (bins - 1) * 4


# ---------------------------------------------------------------- notes


def sustain(notes: Notes, pedal_times: np.ndarray, pedal_values: np.ndarray) -> Notes:
    """Apply a sustain pedal (CC64 values at times, one instrument's): a note released while
    the pedal is down sounds on until the pedal lifts or its pitch is struck again.

    At equal times the pedal acts first (Magenta's order): a release at the moment the pedal
    goes down is sustained; one at the moment it lifts is not. A pedal never lifted holds its
    notes to the end of the performance (the last release or pedal change).
    """
    if len(notes) == 0 or len(pedal_times) == 0:
        return notes
    order = np.argsort(pedal_times, kind="stable")
    down = pedal_values[order] >= SUSTAIN_THRESHOLD
    times = pedal_times[order]
    # the pedal state after each change; intervals where it is down: [press, lift)
    changed = np.flatnonzero(np.diff(np.concatenate([[False], down]).astype(np.int8)))
    edges = times[changed]
    if len(edges) % 2:  # never lifted: held notes end with the performance
        edges = np.append(edges, max(float(np.max(notes.end)), float(times[-1])))
    presses, lifts = edges[0::2], edges[1::2]
    if len(presses) == 0:  # pedal messages, but never pressed down
        return notes
    k = np.searchsorted(presses, notes.end, side="right") - 1  # last press at or before release
    held = (k >= 0) & (notes.end < lifts[np.maximum(k, 0)])
    if not held.any():
        return notes
    end = notes.end.astype(np.float64)
    new_end = lifts[k[held]].astype(np.float64)
    # the next onset of the same pitch, at or after the release, cuts the sustained note short
    order = np.lexsort((notes.start, notes.pitch))
    pitches, starts = notes.pitch[order], notes.start[order].astype(np.float64)
    key = pitches.astype(np.float64) * 1e9  # sort by (pitch, start) in one float key
    idx = np.searchsorted(key + starts, notes.pitch[held] * 1e9 + end[held], side="left")
    same = (idx < len(order)) & (pitches[np.minimum(idx, len(order) - 1)] == notes.pitch[held])
    strike = np.where(same, starts[np.minimum(idx, len(order) - 1)], np.inf)
    end[held] = np.minimum(new_end, strike)
    return Notes(notes.pitch, notes.start, end, notes.velocity)


def quantize(notes: Notes) -> Notes:
    """Seconds -> 10 ms steps, rounding half up; zero-length notes last one step."""
    start = np.floor(np.asarray(notes.start, np.float64) * STEPS_PER_SECOND + 0.5).astype(np.int64)
    end = np.floor(np.asarray(notes.end, np.float64) * STEPS_PER_SECOND + 0.5).astype(np.int64)
    end = np.maximum(end, start + 1)
    pitch = np.asarray(notes.pitch, np.int64)
    velocity = np.clip(np.asarray(notes.velocity, np.int64), 1, 127)
    return Notes(pitch, start, end, velocity)


def canonical_notes(steps: Notes) -> Notes:
    """Quantised notes as decoding returns them: velocities as their bins decode, and the
    releases of each pitch paired with its onsets first in, first out."""
    s = steps.sorted()
    velocity = bin_velocity(velocity_bin(s.velocity))
    end = s.end.copy()
    for pitch in np.unique(s.pitch):
        rows = np.flatnonzero(s.pitch == pitch)
        end[rows] = _fifo_ends(s.start[rows], velocity[rows], s.end[rows])
    return Notes(s.pitch, s.start, end, velocity).sorted()


def _fifo_ends(starts: np.ndarray, velocities: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """One pitch's releases paired with its onsets in the order they are encoded (by step,
    then velocity). This is what replaying the events does (each release closes the oldest
    open onset): the k-th earliest release comes after the k-th earliest onset, since k notes
    have started before it."""
    paired = np.empty(len(starts), dtype=np.int64)
    paired[np.lexsort((velocities, starts))] = np.sort(ends)
    return paired


# ---------------------------------------------------------------- events


def encode_notes(steps: Notes, most: int | None = None) -> np.ndarray:
    """Quantised notes -> event ids (int16), vectorised; more than `most` events raise
    ValueError before they are made (a few notes hours apart take millions of time shifts)."""
    n = len(steps)
    if n == 0:
        return np.zeros(0, dtype=np.int16)
    pitch = np.concatenate([steps.pitch, steps.pitch])
    step = np.concatenate([steps.end, steps.start])
    is_on = np.concatenate([np.zeros(n, bool), np.ones(n, bool)])
    bins = np.concatenate([np.zeros(n, np.int64), velocity_bin(steps.velocity)])
    order = np.lexsort((bins, pitch, is_on, step))  # by step, offs first, by pitch, velocity
    pitch, step, is_on, bins = pitch[order], step[order], is_on[order], bins[order]
    on_bins = bins[is_on]
    new_bin = np.zeros(len(step), bool)
    new_bin[np.flatnonzero(is_on)] = np.concatenate([[True], on_bins[1:] != on_bins[:-1]])
    delta = np.diff(step, prepend=0)
    shifts = -(-delta // MAX_SHIFT)  # TIME_SHIFT events before each event
    counts = shifts + new_bin + 1
    if most is not None and int(counts.sum()) > most:
        raise ValueError(
            f"{int(counts.sum()):,} events ({int(step.max()) / STEPS_PER_SECOND:,.0f}"
            f" s), over the {most:,} a prompt may have"
        )
    out = np.empty(int(counts.sum()), dtype=np.int16)
    first = np.cumsum(counts) - counts  # where each event's group starts
    in_group = np.arange(int(shifts.sum())) - np.repeat(np.cumsum(shifts) - shifts, shifts)
    shift_pos = np.repeat(first, shifts) + in_group
    out[shift_pos] = TIME_SHIFT + MAX_SHIFT
    last = first[shifts > 0] + shifts[shifts > 0] - 1
    remainder = delta[shifts > 0] % MAX_SHIFT
    out[last] = TIME_SHIFT + np.where(remainder == 0, MAX_SHIFT, remainder)
    out[(first + shifts)[new_bin]] = VELOCITY + bins[new_bin]
    out[first + shifts + new_bin] = np.where(is_on, NOTE_ON + pitch, NOTE_OFF + pitch)
    return out


def decode_events(ids) -> Notes:
    """Event ids -> quantised notes. Never fails: ids outside the 388 events (specials) are
    skipped, a NOTE_OFF with no open note is ignored, notes left open end at the last step,
    and zero-length notes are dropped."""
    step, velocity = 0, DEFAULT_VELOCITY
    open_notes: dict[int, list[tuple[int, int]]] = {}
    out: list[tuple[int, int, int, int]] = []
    for token in np.asarray(ids, dtype=np.int64).tolist():
        if is_note_on(token):
            open_notes.setdefault(token, []).append((step, velocity))
        elif is_note_off(token):
            pitch = token - NOTE_OFF
            if open_notes.get(pitch):
                start, v = open_notes[pitch].pop(0)
                out.append((pitch, start, step, v))
        elif is_time_shift(token):
            step += token - TIME_SHIFT
        elif VELOCITY < token < NUM_EVENTS:
            velocity = int(bin_velocity(np.int64(token - VELOCITY)))
    for pitch, pending in open_notes.items():
        out += [(pitch, start, step, v) for start, v in pending]
    notes = np.array(out, dtype=np.int64).reshape(-1, 4)
    pitch, start, end, vel = notes.T
    keep = end > start
    return Notes(pitch[keep], start[keep], end[keep], vel[keep]).sorted()


def event_steps(ids) -> np.ndarray:
    """The time (in steps) of each event: the TIME_SHIFTs up to and including it."""
    ids = np.asarray(ids, dtype=np.int64)
    shift = np.where(is_time_shift(ids), ids - TIME_SHIFT, 0)
    return np.cumsum(shift)


def time_shifts(steps: int) -> list[int]:
    """TIME_SHIFT ids that move time on by `steps` (longest first)."""
    full, rest = divmod(max(0, steps), MAX_SHIFT)
    return [TIME_SHIFT + MAX_SHIFT] * full + ([TIME_SHIFT + rest] if rest else [])


def cut_events(ids, steps: int) -> np.ndarray:
    """The events before time `steps`, then TIME_SHIFTs to end exactly there: the opening of
    a performance as a prompt. Notes still sounding at the cut stay open."""
    ids = np.asarray(ids, dtype=np.int64)
    head = ids[event_steps(ids) < steps]  # times never decrease: a prefix
    now = int(event_steps(head)[-1]) if len(head) else 0
    return np.concatenate([head, np.array(time_shifts(steps - now), dtype=np.int64)])
