"""`seqgen generate` for music checkpoints: continue a MIDI prompt (or start from nothing)
and write a MIDI file whose opening is the prompt; optionally a piano roll and audio.

The shared `Generator` does the decoding; this module adds the music options (seconds of
prompt and of output, note length, piano roll, audio) as the `GeneratesFiles` capability."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seqgen.files import check_writable
from seqgen.tokenizer import Tokenizer
from seqgen_tasks.music.events import (
    MAX_SHIFT,
    NOTE_OFF,
    NOTE_ON,
    STEPS_PER_SECOND,
    TIME_SHIFT,
    cut_events,
    event_steps,
)
from seqgen_tasks.music.midi import decode_midi
from seqgen_tasks.music.state import counts_after

log = logging.getLogger("seqgen")
EVENTS_PER_SECOND_CAP = 200  # far above real piano (ASAP ~43/s): a model stuck without time


@dataclass(kw_only=True)
class MusicGenerate:
    """Music options of `seqgen generate` (the prompt is a MIDI file, --out the MIDI written)."""

    prompt_seconds: float | None = None
    """Use only the prompt's first S seconds (notes sounding then stay open for the model to
    end); the continuation starts at S."""
    seconds: float | None = None
    """Seconds of music to add; generation runs until then, with up to 200 events per second
    asked or max_new_tokens, whichever is more (default: max_new_tokens events)."""
    max_note_seconds: float | None = None
    """Cut notes longer than this, e.g. ones the model never ends (default: keep)."""
    release_sounding_only: bool = True
    """Sample NOTE_OFF only for notes that are sounding. A release of a note that is not
    sounding is ignored when decoding, so the note meant stays held: after 10 min on
    POP909, 40% of a model's releases were of pitches not sounding (most an octave or a
    semitone from one that was). false samples every event freely."""
    piano_roll: str | None = None
    """Write a piano roll of prompt and continuation here (.png)."""
    wav: str | None = None
    """Render audio here with FluidSynth (needs pyfluidsynth and the FluidSynth library)."""
    sample_rate: int = 44100
    """Sample rate of the audio."""
    soundfont: str | None = None
    """General MIDI sound font (.sf2) the audio is rendered with, e.g. Debian's
    fluid-soundfont-gm, /usr/share/sounds/sf2/FluidR3_GM.sf2 (default: pretty_midi's small
    TimGM6mb)."""

    def __post_init__(self) -> None:
        for name in ("prompt_seconds", "seconds", "max_note_seconds"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be > 0, got {self.sample_rate}")
        check_writable(self.piano_roll, "piano_roll")
        check_writable(self.wav, "wav")
        if self.soundfont is not None and not Path(self.soundfont).is_file():
            raise ValueError(f"soundfont {self.soundfont}: no such file")


class SoundingNotes:
    """A `Constraint` for one row: the notes sounding after its ids so far, and the NOTE_OFFs
    of every other pitch banned."""

    def __init__(self, prompt: list[int]) -> None:
        self.sounding = counts_after(np.asarray(prompt, dtype=np.int64)).astype(np.int64)

    def add(self, token: int) -> None:
        if NOTE_ON <= token < NOTE_ON + 128:
            self.sounding[token - NOTE_ON] += 1
        elif NOTE_OFF <= token < NOTE_OFF + 128 and self.sounding[token - NOTE_OFF]:
            self.sounding[token - NOTE_OFF] -= 1

    def banned(self) -> list[int]:
        return (NOTE_OFF + np.flatnonzero(self.sounding == 0)).tolist()


class Clock:
    """A stop_fn for one generate call: True once a row's new events have moved time on by
    `steps`. The engine passes each row its own list of new ids, so rows are told apart by
    that list and a batch of prompts shares one clock. `on_time(steps)` is told how far a
    row moved time on (counted up to `steps` per row), e.g. for progress."""

    def __init__(self, steps: int, on_time: Callable[[int], None] | None = None) -> None:
        self.steps, self.on_time = steps, on_time
        self.rows: dict[int, tuple[int, int]] = {}  # id(new) -> (elapsed steps, ids seen)

    def __call__(self, new: list[int]) -> bool:
        before, seen = self.rows.get(id(new), (0, 0))
        elapsed = before + sum(token - TIME_SHIFT for token in new[seen:]
                               if TIME_SHIFT < token <= TIME_SHIFT + MAX_SHIFT)  # fmt: skip
        self.rows[id(new)] = (elapsed, len(new))
        moved = min(elapsed, self.steps) - min(before, self.steps)
        if moved and self.on_time is not None:
            self.on_time(moved)
        return elapsed >= self.steps


def check_fluidsynth() -> None:
    try:
        import fluidsynth  # noqa: F401  (pretty_midi renders through it)
    except ImportError:
        raise ValueError(
            "wav needs FluidSynth: `pip install pyfluidsynth` and the FluidSynth library "
            "(e.g. `apt install fluidsynth`); the MIDI file plays in any synthesizer meanwhile"
        ) from None


def prepare(ids: list[int], options: MusicGenerate, settings: dict[str, Any]
            ) -> tuple[list[int], dict[str, Any]]:  # fmt: skip
    """The prompt cut to `prompt_seconds`, and a length in seconds or events: the piece may
    not end before the length asked for (end-of-sequence is never sampled)."""
    if options.wav:
        check_fluidsynth()  # before generating: never fail after the work is done
    events = np.asarray(ids[1:], dtype=np.int64)  # after <bos>
    if options.prompt_seconds is not None:
        if len(events) == 0:
            raise ValueError("prompt_seconds needs a prompt with notes")
        events = cut_events(events, round(options.prompt_seconds * STEPS_PER_SECOND))
    limit = settings["max_new_tokens"]
    extra: dict[str, Any] = {}
    if options.seconds is not None:
        limit = max(limit, round(options.seconds * EVENTS_PER_SECOND_CAP))
        extra["stop_fn"] = Clock(round(options.seconds * STEPS_PER_SECOND))
    if options.release_sounding_only:
        extra["constraint"] = SoundingNotes
    return [ids[0], *events.tolist()], {**extra, "max_new_tokens": limit, "min_new_tokens": limit}


def write(ids: list[int], new: list[int], tokenizer: Tokenizer, options: MusicGenerate,
          path: Path) -> list[str]:  # fmt: skip
    """The prompt and its continuation as one MIDI file (and a piano roll, audio)."""
    events = ids[1:]
    new = [t for t in new if t < tokenizer.pad_id]  # events only
    midi = decode_midi(np.asarray(events + new, dtype=np.int64),
                       max_note_seconds=options.max_note_seconds)  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    midi.write(str(path))
    prompt_seconds = (int(event_steps(events)[-1]) if events else 0) / STEPS_PER_SECOND
    added = (int(event_steps(new)[-1]) if new else 0) / STEPS_PER_SECOND
    if options.seconds is not None and added < options.seconds:
        log.warning("warning: stopped at %d events with %.1f s of music (the model rarely "
                    "moves time on)", len(new), added)  # fmt: skip
    released = ("; releases only of sounding notes (--release_sounding_only false: any)"
                if options.release_sounding_only else "")  # fmt: skip
    lines = [f"wrote {path}: {prompt_seconds:.1f} s of prompt + {added:.1f} s generated "
             f"({len(new)} events{released})"]  # fmt: skip
    if options.piano_roll:
        from seqgen_tasks.music.plot import piano_roll

        piano_roll(midi, prompt_seconds, options.piano_roll)
        lines.append(f"wrote {options.piano_roll}")
    if options.wav:
        write_wav(midi, options.wav, options.sample_rate, options.soundfont)
        lines.append(f"wrote {options.wav}")
    return lines


def write_wav(midi, path: str, sample_rate: int, soundfont: str | None = None) -> None:
    """Render with FluidSynth (with `soundfont`, else pretty_midi's General MIDI sound font)
    to 16-bit PCM."""
    import wave

    audio = midi.fluidsynth(fs=sample_rate, synthesizer=soundfont)
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    pcm = (audio / peak * 0.9 * 32767 if peak else audio).astype("<i2")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with wave.open(path, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm.tobytes())
