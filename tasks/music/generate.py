"""`seqgen generate` for music checkpoints: continue a MIDI prompt (or start from nothing)
and write a MIDI file whose opening is the prompt; optionally a piano roll and audio.

The shared `Generator` does the decoding; this module adds the music options (seconds of
prompt and of output, note length, piano roll, audio) as the `GeneratesFiles` capability."""

from __future__ import annotations

import copy
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch

from seqgen.files import check_writable
from seqgen.generation.decoding import NEG_INF
from seqgen.tokenizer import Tokenizer
from seqgen_tasks.music.events import (
    NOTE_OFF,
    NOTE_ON,
    NUM_EVENTS,
    STEPS_PER_SECOND,
    TIME_SHIFT,
    Notes,
    cut_events,
    event_steps,
    is_note_off,
    is_note_on,
    is_time_shift,
)
from seqgen_tasks.music.midi import decode_midi
from seqgen_tasks.music.state import counts_after
from seqgen_tasks.music.tokenizer import BUILTIN_SPECIALS

log = logging.getLogger("seqgen")
SAMPLE_RATE = 44_100  # of the WAV written (CD audio; FluidSynth's default)
EVENTS_PER_SECOND_CAP = 200  # far above real piano (ASAP ~43/s): a model stuck without time
OCTAVES = 11  # pitch // 12 of the 128 MIDI pitches
VOCAB = NUM_EVENTS + len(BUILTIN_SPECIALS)
Rules = Literal["valid", "all"]
RULES: tuple[str, ...] = get_args(Rules)


def check_rules(rules: str) -> None:
    if rules not in RULES:
        raise ValueError(f"rules must be one of {', '.join(RULES)}, got {rules!r}")


@dataclass(kw_only=True)
class MusicPlay:
    """How a music model plays on from a prompt: options of `seqgen generate` and of
    `seqgen evaluate`, which continues held-out performances."""

    prompt_seconds: float | None = None
    """Use only the prompt's first S seconds (notes sounding then stay open for the model to
    end); the continuation starts at S (evaluate: each performance's first S seconds,
    default 10)."""
    seconds: float | None = None
    """Seconds of music to add; generation runs until then, with up to 200 events per second
    asked or max_new_tokens, whichever is more (default: max_new_tokens events). Evaluate:
    continue each held-out performance this long and compare with what the performer
    played next."""
    rules: Rules = "all"
    """How generation keeps the notes playable. `valid`: a note is released only while it
    sounds (a release of a silent pitch would be ignored when decoding, leaving the note
    meant held: after 10 min on POP909, 40% of a model's releases were such), the model's
    probabilities renormalised over the rest. `all` (default) also releases a note once it
    has sounded longer than 99% of the training notes of its octave did (the checkpoint
    stores these limits): a guarantee against notes held on and on that, on the dev
    splits, played as well as valid with the recipes' models (mean overlap with what the
    performer played, three models each: POP909 0.845 both, ASAP 0.859 against 0.855). A
    model trained with data.release_weight 1 needs shorter limits (docs/benchmarks.md)."""

    def __post_init__(self) -> None:
        for name in ("prompt_seconds", "seconds"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        check_rules(self.rules)


@dataclass(kw_only=True)
class MusicGenerate(MusicPlay):
    """Music options of `seqgen generate` (the prompt is a MIDI file, --out the MIDI written)."""

    piano_roll: str | None = None
    """Write a piano roll of prompt and continuation here (.png)."""
    wav: str | None = None
    """Render audio here with FluidSynth, 16-bit mono at 44.1 kHz (needs pyfluidsynth and the
    FluidSynth library)."""
    soundfont: str | None = None
    """General MIDI sound font (.sf2) the audio is rendered with, e.g. Debian's
    fluid-soundfont-gm, /usr/share/sounds/sf2/FluidR3_GM.sf2 (default: pretty_midi's small
    TimGM6mb)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_writable(self.piano_roll, "piano_roll")
        check_writable(self.wav, "wav")
        if self.soundfont is not None and not Path(self.soundfont).is_file():
            raise ValueError(f"soundfont {self.soundfont}: no such file")


HOLD_QUANTILE = 0.99
"""Generation releases a note once it has sounded longer than this share of the training
notes of its octave did. Chosen on the dev splits for the recipes' models (release weight
2; three per corpus, paired bootstrap against 0.85 over the dev performances;
`benchmarks/music_rules.py --quantiles`) as the best mean of the two corpora: POP909 +0.028
[+0.014, +0.036] in mean overlap with what the performer played, ASAP +0.019 [+0.005,
+0.030] (0.95: +0.009 and +0.009; no limits: +0.028 and +0.015). Models trained with every
event counting once hold their notes too long alone, and do best at 0.85 (ASAP +0.027
against 0.96)."""
NEVER = np.iinfo(np.int64).max // 2  # the onset of a pitch with no note sounding


def hold_limits(performances: list[Notes], quantile: float = HOLD_QUANTILE) -> list[float]:
    """Seconds that generation lets a note of each octave (pitch // 12, 11 of them) sound:
    the `quantile` of the durations of the training notes of that octave (`performances`),
    or of all their notes for an octave with fewer than 50; to the 10 ms step, and at least
    one step."""
    durations = np.concatenate([p.end - p.start for p in performances]) / STEPS_PER_SECOND
    octave = np.concatenate([p.pitch for p in performances]) // 12
    if len(durations) == 0:
        raise ValueError("note length limits need notes")
    overall = np.quantile(durations, quantile)
    found = [
        np.quantile(durations[octave == o], quantile) if (octave == o).sum() >= 50 else overall
        for o in range(OCTAVES)
    ]
    return [max(round(float(x), 2), 1 / STEPS_PER_SECOND) for x in found]


class NoteRules:
    """A `LogitsProcessor` for one row that follows its notes as ids arrive. With
    `sounding_only`, NOTE_OFFs of pitches with no note sounding are banned. With `limits`
    (seconds per octave, `hold_limits`), a note that has sounded that long is released at
    once: every other id is banned until it is (`released` counts them). A banned id's
    probability goes to every id allowed, in the model's own proportions."""

    def __init__(
        self, prompt: list[int], sounding_only: bool = True, limits: list[float] | None = None
    ) -> None:
        self.sounding_only = sounding_only
        self.limits = _per_pitch(limits)
        events = np.asarray(prompt, dtype=np.int64)
        times = event_steps(events)
        self.now = int(times[-1]) if len(times) else 0
        # the onsets of the notes open, by pitch: each pitch's last NOTE_ONs (a release ends
        # the oldest first)
        self.onsets = [deque() for _ in range(128)]
        counts = counts_after(events)
        for pitch in np.flatnonzero(counts).tolist():
            struck = times[events == NOTE_ON + pitch]
            self.onsets[pitch].extend(struck[len(struck) - counts[pitch] :].tolist())
        self.oldest = np.array([o[0] if o else NEVER for o in self.onsets], dtype=np.int64)
        self.released = 0
        self.seen = 0  # the row's new ids followed so far

    def __call__(self, ids: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        for token in ids[self.seen :]:
            self.add(token)
        self.seen = len(ids)
        banned = self.banned()
        if banned:
            logits[banned] = NEG_INF
        return logits

    def copy(self) -> NoteRules:
        twin = copy.copy(self)
        twin.onsets = [deque(o) for o in self.onsets]
        twin.oldest = self.oldest.copy()
        return twin

    @property
    def sounding(self) -> np.ndarray:
        """(128,) the notes open of each pitch."""
        return np.array([len(o) for o in self.onsets])

    def _overdue(self) -> np.ndarray:
        """(128,) whether each pitch's oldest open note has sounded its limit."""
        if self.limits is None:
            return np.zeros(128, dtype=bool)
        return self.now - self.oldest >= self.limits

    def add(self, token: int) -> None:
        if is_note_on(token):
            pitch = token - NOTE_ON
            self.onsets[pitch].append(self.now)
        elif is_note_off(token) and self.onsets[token - NOTE_OFF]:
            pitch = token - NOTE_OFF
            self.released += int(self._overdue()[pitch])
            self.onsets[pitch].popleft()
        elif is_time_shift(token):
            self.now += token - TIME_SHIFT
            return
        else:
            return
        self.oldest[pitch] = self.onsets[pitch][0] if self.onsets[pitch] else NEVER

    def banned(self) -> list[int]:
        """The ids the row may not take next."""
        overdue = np.flatnonzero(self._overdue())
        if len(overdue):
            allowed = np.zeros(VOCAB, dtype=bool)
            allowed[NOTE_OFF + overdue] = True
            return np.flatnonzero(~allowed).tolist()
        if not self.sounding_only:
            return []
        return (NOTE_OFF + np.flatnonzero(self.oldest == NEVER)).tolist()


def _per_pitch(seconds: list[float] | None) -> np.ndarray | None:
    """Seconds per octave as 10 ms steps per pitch (128,)."""
    if seconds is None:
        return None
    steps = np.round(np.asarray(seconds, dtype=np.float64) * STEPS_PER_SECOND)
    return np.repeat(steps.astype(np.int64), 12)[:128]


def released_notes(ids: list[int], new: list[int], limits: list[float] | None) -> int:
    """How many notes `NoteRules` with hold `limits` released in `new` (after `ids`)."""
    if limits is None:
        return 0
    rules = NoteRules(ids, limits=limits)
    for token in new:
        rules.add(token)
    return rules.released


def ruled_limits(rules: str, limits: list[float] | None) -> list[float] | None:
    """The hold limits that `rules` apply, given the checkpoint's: those under `all`, none
    under `valid`."""
    check_rules(rules)
    return None if rules == "valid" else limits


def rule_processor(rules: str, limits: list[float] | None) -> Callable[[list[int]], NoteRules]:
    """The engine's processor for `rules` (`MusicGenerate.rules`), with the checkpoint's
    hold `limits`: releases only of sounding notes, and under `all` the hold limits."""
    return partial(NoteRules, limits=ruled_limits(rules, limits))


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
        elapsed = before + sum(token - TIME_SHIFT for token in new[seen:] if is_time_shift(token))
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


def prepare(
    ids: list[int],
    options: MusicGenerate,
    settings: dict[str, Any],
    stored_limits: list[float] | None = None,
) -> tuple[list[int], dict[str, Any]]:
    """The prompt cut to `prompt_seconds`, and a length in seconds or events: the piece may
    not end before the length asked for (end-of-sequence is never sampled). The notes are
    ruled by `NoteRules` as `options.rules` say, with the checkpoint's `stored_limits`."""
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
    extra["processor"] = rule_processor(options.rules, stored_limits)
    return [ids[0], *events.tolist()], {**extra, "max_new_tokens": limit, "min_new_tokens": limit}


def write(
    ids: list[int],
    new: list[int],
    tokenizer: Tokenizer,
    options: MusicGenerate,
    path: Path,
    stored_limits: list[float] | None = None,
) -> list[str]:
    """The prompt and its continuation as one MIDI file (and a piano roll, audio)."""
    events = ids[1:]
    new = [t for t in new if t < tokenizer.pad_id]  # events only
    midi = decode_midi(np.asarray(events + new, dtype=np.int64))
    path.parent.mkdir(parents=True, exist_ok=True)
    midi.write(str(path))
    prompt_seconds = (int(event_steps(events)[-1]) if events else 0) / STEPS_PER_SECOND
    added = (int(event_steps(new)[-1]) if new else 0) / STEPS_PER_SECOND
    if options.seconds is not None and added < options.seconds:
        log.warning(
            "warning: stopped at %d events with %.1f s of music (the model rarely moves time on)",
            len(new),
            added,
        )
    lines = [
        f"wrote {path}: {prompt_seconds:.1f} s of prompt + {added:.1f} s generated "
        f"({len(new)} events{rules_said(ids, new, options, stored_limits)})"
    ]
    if options.piano_roll:
        from seqgen_tasks.music.plot import piano_roll

        piano_roll(midi, prompt_seconds, options.piano_roll)
        lines.append(f"wrote {options.piano_roll}")
    if options.wav:
        write_wav(midi, options.wav, options.soundfont)
        lines.append(f"wrote {options.wav}")
    return lines


def rules_said(
    ids: list[int], new: list[int], options: MusicGenerate, stored_limits: list[float] | None
) -> str:
    """What the note rules did to `new`, for the output line."""
    if options.rules == "valid":
        return "; rules valid: releases only of sounding notes"
    said = "; rules all: releases only of sounding notes"
    if stored_limits is None:
        said += ", no note-length limits stored in this checkpoint (trained before them)"
    else:
        count = released_notes(ids, new, stored_limits)
        said += f", {count} note{'' if count == 1 else 's'} released when held too long"
    return said + " (--rules valid: the model alone decides)"


def write_wav(midi, path: str, soundfont: str | None = None) -> None:
    """Render with FluidSynth (with `soundfont`, else pretty_midi's General MIDI sound font)
    to 16-bit PCM at SAMPLE_RATE."""
    import wave

    audio = midi.fluidsynth(fs=SAMPLE_RATE, synthesizer=soundfont)
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    pcm = (audio / peak * 0.9 * 32767 if peak else audio).astype("<i2")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with wave.open(path, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(pcm.tobytes())
