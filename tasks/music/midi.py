"""MIDI files <-> performance events, through symusic (a C++ parser: bulk encoding) or
pretty_midi (the user-facing objects). Both turn ticks into seconds with pretty_midi's
arithmetic, so the two give the same events. One exception: a track that strikes a key
again before releasing it; pretty_midi ends both notes at the first release (and drops the
second), symusic pairs the releases in order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pretty_midi

from seqgen.errors import DataError
from seqgen_tasks.music.events import (
    SUSTAIN_CC,
    Notes,
    decode_events,
    encode_notes,
    quantize,
    sustain,
)


def merge(parts: list[Notes]) -> Notes:
    if not parts:
        return Notes.empty()
    return Notes(
        *(
            np.concatenate([getattr(p, f) for p in parts])
            for f in ("pitch", "start", "end", "velocity")
        )
    )


def notes_from_pretty_midi(midi: pretty_midi.PrettyMIDI) -> Notes:
    """Every non-drum instrument's notes, each with its own sustain pedal applied, merged."""
    parts = []
    for instrument in midi.instruments:
        if instrument.is_drum or not instrument.notes:
            continue
        notes = Notes(
            np.array([n.pitch for n in instrument.notes], np.int64),
            np.array([n.start for n in instrument.notes], np.float64),
            np.array([n.end for n in instrument.notes], np.float64),
            np.array([n.velocity for n in instrument.notes], np.int64),
        )
        pedal = [c for c in instrument.control_changes if c.number == SUSTAIN_CC]
        times = np.array([c.time for c in pedal], np.float64)
        values = np.array([c.value for c in pedal], np.int64)
        parts.append(sustain(notes, times, values))
    return merge(parts)


def tick_seconds(
    ticks: np.ndarray, tempo_ticks: np.ndarray, mspq: np.ndarray, resolution: int
) -> np.ndarray:
    """Ticks -> seconds under a tempo map, with pretty_midi's arithmetic (so both parsers
    round to the same 10 ms steps)."""
    if len(tempo_ticks) == 0 or tempo_ticks[0] != 0:
        tempo_ticks = np.concatenate([[0], tempo_ticks])
        mspq = np.concatenate([[500000], mspq])  # MIDI's default tempo, 120 bpm
    # a later tempo change at the same tick wins
    last = np.append(tempo_ticks[1:] != tempo_ticks[:-1], True)
    tempo_ticks, mspq = tempo_ticks[last], mspq[last]
    seconds_per_tick = 60.0 / ((6e7 / mspq.astype(np.float64)) * resolution)
    segment_seconds = np.concatenate(
        [[0.0], np.cumsum(np.diff(tempo_ticks) * seconds_per_tick[:-1])]
    )
    k = np.searchsorted(tempo_ticks, ticks, side="right") - 1
    return segment_seconds[k] + (ticks - tempo_ticks[k]) * seconds_per_tick[k]


def notes_from_symusic(score) -> Notes:
    """The same as `notes_from_pretty_midi`, from a symusic Score loaded in ticks."""
    tempos = score.tempos.numpy()

    def convert(ticks) -> np.ndarray:
        return tick_seconds(
            np.asarray(ticks, np.int64),
            tempos["time"].astype(np.int64),
            tempos["mspq"],
            score.ticks_per_quarter,
        )

    parts = []
    for track in score.tracks:
        if track.is_drum or len(track.notes) == 0:
            continue
        n = track.notes.numpy()
        start = n["time"].astype(np.int64)
        notes = Notes(
            n["pitch"].astype(np.int64),
            convert(start),
            convert(start + n["duration"].astype(np.int64)),
            n["velocity"].astype(np.int64),
        )
        c = track.controls.numpy()
        pedal = c["number"] == SUSTAIN_CC
        parts.append(sustain(notes, convert(c["time"][pedal]), c["value"][pedal].astype(np.int64)))
    return merge(parts)


def encode_midi(source: str | Path | pretty_midi.PrettyMIDI) -> np.ndarray:
    """Event ids of a MIDI file (parsed with symusic) or a PrettyMIDI object."""
    if isinstance(source, pretty_midi.PrettyMIDI):
        return encode_notes(quantize(notes_from_pretty_midi(source)))
    import symusic

    return encode_notes(quantize(notes_from_symusic(symusic.Score(str(source)))))


def decode_midi(ids, program: int = 0) -> pretty_midi.PrettyMIDI:
    """A one-instrument PrettyMIDI (acoustic grand piano by default) from event ids."""
    notes = decode_events(ids)
    midi = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(program=program, name="piano")
    piano.notes = [
        pretty_midi.Note(velocity=int(v), pitch=int(p), start=s / 100, end=e / 100)
        for p, s, e, v in zip(notes.pitch, notes.start, notes.end, notes.velocity, strict=True)
    ]
    midi.instruments.append(piano)
    return midi


def read_midi(path: str | Path) -> pretty_midi.PrettyMIDI:
    """A MIDI file as PrettyMIDI; a missing or unreadable file is a DataError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such MIDI file")
    try:
        return pretty_midi.PrettyMIDI(str(path))
    except Exception as err:  # mido and pretty_midi raise many types for damaged files
        raise DataError(f"{path}: not a readable MIDI file ({type(err).__name__}: {err})") from None
