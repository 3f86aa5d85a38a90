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
from seqgen_tasks.music.events import (
    NOTE_OFF,
    NOTE_ON,
    TIME_SHIFT,
    event_steps,
    is_note_off,
    is_note_on,
    is_time_shift,
)


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
    on, off = is_note_on(ids), is_note_off(ids)
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
        on, off = is_note_on(tokens), is_note_off(tokens)
        pitch = torch.where(on, tokens - NOTE_ON, tokens - NOTE_OFF).clamp(0, 127)
        change = on.to(state.dtype) - off.to(state.dtype)
        new = state.clone()
        new[rows, pitch] = (state[rows, pitch] + change).clamp(min=0)
        return new


AGE_LIMIT = 500  # steps of 10 ms: a note sounding longer reads as 5 s old
AGE_SCALES = (5, 20, 80)  # steps: how fast each age feature fades (50, 200, 800 ms)
SILENT = AGE_LIMIT + 1  # the age index of a pitch not sounding: every age feature 0
# the age features by age index, one row per feature: the linear age, then each fade; the
# one table both the data (numpy) and generation (torch) read, so they agree to the bit
_AGE_FEATURES = np.zeros((1 + len(AGE_SCALES), SILENT + 1), np.float32)
_AGE_FEATURES[0, :SILENT] = np.arange(SILENT).astype(np.float32) / np.float32(AGE_LIMIT)
_AGE_FEATURES[1:, :SILENT] = np.exp(-np.arange(SILENT) / np.array(AGE_SCALES)[:, None])


class SoundingAges(SoundingPitches):
    """The counts of `SoundingPitches`, and how long ago each sounding pitch was last
    struck: its age in steps a, up to AGE_LIMIT, as a / AGE_LIMIT and as exp(-a / s) for
    each of AGE_SCALES (all 0 for a silent pitch).

    The counts say which notes can end; the ages say which are due to. A model with the
    counts alone released notes struck under 50 ms before twice as often as performers do,
    and older ones too rarely (ASAP, held-out pieces, teacher-forced): it could tell an old
    note from a new one only by finding its onset in the context window.

    Layout: counts (128), the linear age (128), then a block of 128 per scale. An onset of
    a sounding pitch makes it new again. The features are functions of whole steps, so
    computed whole or step by step they are the same to the bit.
    """

    size = 128 * (2 + len(AGE_SCALES))

    def __init__(self) -> None:
        self._features: dict[torch.device, torch.Tensor] = {}

    def sequence(self, ids: np.ndarray, before: np.ndarray | None = None) -> np.ndarray:
        if before is None:
            return self._sequence(ids, None, np.zeros(128, np.int64))
        before = np.asarray(before, np.float32)
        return self._sequence(ids, before[:128], np.rint(before[128:256] * AGE_LIMIT))

    def _sequence(
        self, ids: np.ndarray, start_counts: np.ndarray | None, start_ages: np.ndarray
    ) -> np.ndarray:
        """The states after each id, from the counts and ages (in steps) before the first."""
        ids = np.asarray(ids, dtype=np.int64)
        counts = sounding_counts(ids, start_counts)
        # each id's time and each pitch's last onset, the start's notes struck before 0
        time = event_steps(ids).astype(np.int32)
        struck = np.empty((len(ids), 128), np.int32)
        struck[:] = -start_ages.astype(np.int32)
        onsets, pitch = _onsets(ids)
        struck[onsets, pitch] = time[onsets]
        last = np.maximum.accumulate(struck, axis=0)
        ages = np.minimum(time[:, None] - last, AGE_LIMIT)
        return _with_ages(counts, ages)

    def window(self, ids: np.ndarray, start: int) -> np.ndarray:
        if start == 0:
            return self.sequence(ids)
        before = np.asarray(ids[:start], dtype=np.int64)
        time = event_steps(before)
        onsets, pitch = _onsets(before)
        last = np.full(128, -AGE_LIMIT, dtype=np.int64)  # never struck: silent anyway
        last[pitch] = time[onsets]  # in time order: the last onset wins
        ages = np.minimum(time[-1] - last, AGE_LIMIT)
        return self._sequence(ids[start:], counts_after(before), ages)

    def advance(self, state: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        counts = super().advance(state[:, :128], tokens)
        ages = torch.round(state[:, 128:256] * AGE_LIMIT).long()
        shift = is_time_shift(tokens)
        ages = (ages + torch.where(shift, tokens - TIME_SHIFT, 0)[:, None]).clamp(max=AGE_LIMIT)
        on = is_note_on(tokens)
        ages[torch.arange(len(tokens), device=tokens.device)[on], tokens[on] - NOTE_ON] = 0
        if state.device not in self._features:
            self._features[state.device] = torch.from_numpy(_AGE_FEATURES).to(state.device)
        index = torch.where(counts > 0, ages, SILENT)
        features = self._features[state.device][:, index]  # (features, B, 128)
        return torch.cat([counts, *features], dim=1).to(state.dtype)


def _onsets(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The positions of the NOTE_ONs among the ids and their pitches."""
    pitch, change = _changes(ids)
    onsets = np.flatnonzero(change > 0)
    return onsets, pitch[onsets]


def _with_ages(counts: np.ndarray, ages: np.ndarray) -> np.ndarray:
    """(T, 128) counts and ages in steps -> the (T, size) float32 states. Each age feature
    is looked up by age in a table (a gather per feature: the data loader computes this
    for every training window)."""
    out = np.empty((len(counts), SoundingAges.size), np.float32)
    out[:, :128] = counts
    index = np.where(counts > 0, ages, SILENT)
    for k, feature in enumerate(_AGE_FEATURES, start=1):
        out[:, 128 * k : 128 * (k + 1)] = np.take(feature, index)
    return out
