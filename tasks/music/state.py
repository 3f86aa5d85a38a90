"""The notes sounding after every event: the music task's token state (`seqgen.state`).

A model of performance events must remember which notes are open to release them: after
10 min on POP909 a model without this state put half of its release probability, at the
real releases of held-out songs, on pitches that were not sounding, and held notes for
seconds on end. Counting is the task's bookkeeping, so the model is given the count of
open notes of each pitch beside every event, whatever its context window still holds.

The counts follow decoding (`decode_events`): a NOTE_ON opens a note of its pitch, a
NOTE_OFF closes one if one is open and is otherwise ignored.
"""

from __future__ import annotations

import numpy as np
import torch

from seqgen.state import TokenState
from seqgen_tasks.music.events import NOTE_OFF, NOTE_ON


def sounding_counts(ids: np.ndarray, initial: np.ndarray | None = None) -> np.ndarray:
    """(T, 128) int16: the notes of each pitch open after each id, vectorised, starting
    from the `initial` counts (default: none open).

    Per pitch, a walk of +1 (onsets) and -1 (releases) that a release cannot take below 0
    is the plain running sum c_t moved up by how far below 0 it has reached:
    s_t = s_0 + c_t - min(0, min_{u <= t} (s_0 + c_u)).
    """
    start = np.zeros(128, np.int16) if initial is None else np.asarray(initial, np.int16)
    if len(ids) == 0:
        return np.zeros((0, 128), np.int16)
    pitch, change = _changes(ids)
    steps = np.zeros((len(ids), 128), dtype=np.int16)
    steps[np.flatnonzero(change), pitch[change != 0]] = change[change != 0]
    total = start + np.cumsum(steps, axis=0, dtype=np.int16)
    return total - np.minimum(np.minimum.accumulate(total, axis=0), 0)


def counts_after(ids: np.ndarray) -> np.ndarray:
    """(128,) the counts of `sounding_counts` after the last id, from the onsets and
    releases alone (a long performance's prefix costs its events, not 128 columns each)."""
    pitch, change = _changes(ids)
    pitch, change = pitch[change != 0], change[change != 0]
    order = np.argsort(pitch, kind="stable")  # each pitch's events, in time order
    pitch, change = pitch[order], change[order].astype(np.int64)
    walk = np.cumsum(change)
    first = np.searchsorted(pitch, pitch)  # the first event of each event's pitch
    walk -= (walk - change)[first]  # the running sum within the pitch
    # the lowest point so far within the pitch: later pitches sit lower by far
    shift = pitch * (2 * len(walk) + 2)
    lowest = np.minimum.accumulate(walk - shift) + shift
    counts = np.zeros(128, np.int16)
    last = np.r_[pitch[1:] != pitch[:-1], True] if len(pitch) else np.zeros(0, bool)
    counts[pitch[last]] = (walk - np.minimum(lowest, 0))[last]
    return counts


def _changes(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each id's pitch and its change to the count: +1 onset, -1 release, 0 otherwise."""
    ids = np.asarray(ids, dtype=np.int64)
    on = (ids >= NOTE_ON) & (ids < NOTE_ON + 128)
    off = (ids >= NOTE_OFF) & (ids < NOTE_OFF + 128)
    pitch = np.where(off, ids - NOTE_OFF, ids - NOTE_ON)
    return pitch, on.astype(np.int8) - off.astype(np.int8)


class SoundingPitches(TokenState):
    """The count of open notes of each of the 128 pitches."""

    size = 128

    def sequence(self, ids: np.ndarray, before: np.ndarray | None = None) -> np.ndarray:
        return sounding_counts(ids, before)

    def window(self, ids: np.ndarray, start: int) -> np.ndarray:
        return sounding_counts(ids[start:], counts_after(ids[:start]))

    def advance(self, state: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(len(tokens), device=tokens.device)
        on = (tokens >= NOTE_ON) & (tokens < NOTE_ON + 128)
        off = (tokens >= NOTE_OFF) & (tokens < NOTE_OFF + 128)
        pitch = torch.where(on, tokens - NOTE_ON, tokens - NOTE_OFF).clamp(0, 127)
        change = on.to(state.dtype) - off.to(state.dtype)
        new = state.clone()
        new[rows, pitch] = (state[rows, pitch] + change).clamp(min=0)
        return new
