"""`seqgen generate` for music checkpoints: continue a MIDI prompt (or start from nothing)
and write a MIDI file whose opening is the prompt; optionally a piano roll and audio."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from seqgen.errors import SeqgenError
from seqgen_tasks.music.events import (
    MAX_SHIFT,
    STEPS_PER_SECOND,
    TIME_SHIFT,
    cut_events,
    event_steps,
)
from seqgen_tasks.music.midi import decode_midi, read_midi

EVENTS_PER_SECOND_CAP = 200  # far above real piano (ASAP ~43/s): a model stuck without time


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="seqgen generate --task music",
        description="Continue a MIDI prompt with a music checkpoint and write a MIDI file.",
    )
    p.add_argument("--task", default="music", help=argparse.SUPPRESS)
    p.add_argument("--ckpt", required=True, help="Checkpoint or run directory.")
    p.add_argument("--prompt", help="MIDI file to continue (default: start from nothing).")
    p.add_argument(
        "--prompt-seconds",
        type=float,
        default=None,
        help="Use only the prompt's first S seconds (notes sounding then stay "
        "open for the model to end); the continuation starts at S.",
    )
    p.add_argument("--out", required=True, help="MIDI file to write (prompt + continuation).")
    length = p.add_mutually_exclusive_group()
    length.add_argument(
        "--seconds", type=float, default=None, help="Seconds of music to add (default: 20)."
    )
    length.add_argument("--max-new-tokens", type=int, default=None, help="Events to add.")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy.")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--max-note-seconds",
        type=float,
        default=None,
        help="Cut notes longer than this, e.g. ones the model never ends (default: keep).",
    )
    p.add_argument("--piano-roll", help="Write a piano roll of prompt and continuation (.png).")
    p.add_argument("--wav", help="Render audio with FluidSynth (needs pyfluidsynth).")
    p.add_argument("--sample-rate", type=int, default=44100, help="Of --wav.")
    p.add_argument("--precision", choices=["32", "bf16"], default="32")
    return p


class Clock:
    """A stop_fn: True once the new events have moved time on by `steps`."""

    def __init__(self, steps: int) -> None:
        self.steps, self.elapsed, self.seen = steps, 0, 0

    def __call__(self, new: list[int]) -> bool:
        for token in new[self.seen :]:
            if TIME_SHIFT < token <= TIME_SHIFT + MAX_SHIFT:
                self.elapsed += token - TIME_SHIFT
        self.seen = len(new)
        return self.elapsed >= self.steps


def check_fluidsynth() -> None:
    try:
        import fluidsynth  # noqa: F401  (pretty_midi renders through it)
    except ImportError:
        raise SeqgenError(
            "--wav needs FluidSynth: `pip install pyfluidsynth` and the "
            "FluidSynth library (e.g. `apt install fluidsynth`); the MIDI file "
            "plays in any synthesizer meanwhile"
        ) from None


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.wav:
        check_fluidsynth()  # before generating: never fail after the work is done
    if args.prompt_seconds is not None and not args.prompt:
        raise SeqgenError("--prompt-seconds needs --prompt")
    for value, name in (
        (args.seconds, "--seconds"),
        (args.prompt_seconds, "--prompt-seconds"),
        (args.max_new_tokens, "--max-new-tokens"),
    ):
        if value is not None and value <= 0:
            raise SeqgenError(f"{name} must be > 0, got {value}")
    from seqgen.inference import load

    generator = load(args.ckpt, task="music", precision=args.precision)
    events = np.zeros(0, dtype=np.int64)
    if args.prompt:
        events = np.asarray(generator.prompt_ids(read_midi(args.prompt))[1:], dtype=np.int64)
        if len(events) == 0:
            print(f"warning: {args.prompt} has no notes (drums only?): generating from "
                  "nothing", file=sys.stderr)  # fmt: skip
        elif args.prompt_seconds is not None:
            events = cut_events(events, round(args.prompt_seconds * STEPS_PER_SECOND))
    prompt_steps = int(event_steps(events)[-1]) if len(events) else 0
    seconds = args.seconds or 20.0  # unused when --max-new-tokens is given
    options = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    if args.max_new_tokens is not None:
        limit = args.max_new_tokens
    else:
        limit = max(1000, round(seconds * EVENTS_PER_SECOND_CAP))
        options["stop_fn"] = Clock(round(seconds * STEPS_PER_SECOND))
    # the piece may not end before the length asked for: eos is never sampled
    options.update(max_new_tokens=limit, min_new_tokens=limit)
    started = time.perf_counter()
    try:
        from seqgen.engine import generate

        ids = [generator.tokenizer.bos_id, *events.tolist()]
        new = generate(generator.model, ids, eos_id=generator.tokenizer.eos_id, **options)
    except ValueError as err:
        raise SeqgenError(str(err)) from None
    took = time.perf_counter() - started
    new = [t for t in new if t < generator.tokenizer.pad_id]  # events only
    midi = decode_midi(
        np.concatenate([events, np.asarray(new, dtype=np.int64)]),
        max_note_seconds=args.max_note_seconds,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    midi.write(str(out))
    added = (int(event_steps(new)[-1]) if new else 0) / STEPS_PER_SECOND
    if args.max_new_tokens is None and added < seconds:
        print(
            f"warning: stopped at {limit} events with {added:.1f} s of music (the model "
            "rarely moves time on)",
            file=sys.stderr,
        )
    print(
        f"wrote {out}: {prompt_steps / STEPS_PER_SECOND:.1f} s of prompt + {added:.1f} s "
        f"generated ({len(new)} events in {took:.1f} s, {len(new) / max(took, 1e-9):.0f}/s)"
    )
    if args.piano_roll:
        from seqgen_tasks.music.plot import piano_roll

        piano_roll(midi, prompt_steps / STEPS_PER_SECOND, args.piano_roll)
        print(f"wrote {args.piano_roll}")
    if args.wav:
        write_wav(midi, args.wav, args.sample_rate)
        print(f"wrote {args.wav}")
    return 0


def write_wav(midi, path: str, sample_rate: int) -> None:
    """Render with FluidSynth (pretty_midi's default General MIDI sound font) to 16-bit PCM."""
    import wave

    audio = midi.fluidsynth(fs=sample_rate)
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    pcm = (audio / peak * 0.9 * 32767 if peak else audio).astype("<i2")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with wave.open(path, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm.tobytes())
