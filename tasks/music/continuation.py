"""Continuations of held-out performances: prompt a model with the first seconds of each,
let it play on, and compare what it played with what the performer played next.

The window compared is [prompt_seconds, prompt_seconds + seconds) of both, every note
sounding in it clipped to it, so a note the model never releases counts as long as it is
held there and the real notes are cut the same way. The statistics are the evaluation's
(overlap of pitch-class, velocity, density, inter-onset, duration and polyphony
histograms; failure counts), with 95% bootstrap intervals over the performances; the
model's NLL of the real continuation after the same prompt says how likely it found what
the performer did.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from seqgen.errors import DataError
from seqgen.progress import Progress
from seqgen_tasks.music.events import (
    STEPS_PER_SECOND,
    Notes,
    cut_events,
    decode_events,
    encode_notes,
    event_steps,
    is_time_shift,
    time_shifts,
)
from seqgen_tasks.music.generate import (
    EVENTS_PER_SECOND_CAP,
    Clock,
    NoteRules,
    released_notes,
    rule_processor,
    ruled_limits,
)
from seqgen_tasks.music.statistics import bootstrap_weights, failures, overlap, resampled_overlap


def window(notes: Notes, start: int, end: int) -> Notes:
    """The notes sounding in steps [start, end), clipped to it and moved to start at 0."""
    keep = (notes.start < end) & (notes.end > start)
    clip = lambda t: np.clip(t[keep], start, end) - start  # noqa: E731
    return Notes(notes.pitch[keep], clip(notes.start), clip(notes.end), notes.velocity[keep])


def events_after(events: np.ndarray, start: int, end: int) -> list[int]:
    """The events at steps [start, end) as they follow a prompt cut at `start` by
    `cut_events` (which already moved time on to `start`), then time moved on to `end`
    (nothing happens before it), so notes still sounding there end there."""
    steps = event_steps(events)
    kept = ~is_time_shift(events) & (steps >= start) & (steps < end)
    out, now = [], start
    for step, event in zip(steps[kept].tolist(), events[kept].tolist(), strict=True):
        out += time_shifts(step - now)
        now = step
        out.append(event)
    return out + time_shifts(end - now)


def strided_logits(
    model, ids: list[int], first: int, states: np.ndarray | None = None
) -> Iterator[tuple[int, torch.Tensor]]:
    """The logits (n, vocab) of ids[begin : begin + n] for each `begin` from `first` on,
    each id predicted with at least half the context of the model before it (windows of
    block_size moving by half of it). `states`: the token state after each id, for a model
    that reads one."""
    block = model.config.block_size
    device = next(model.parameters()).device
    stride = max(1, block // 2)
    with torch.inference_mode():
        for begin in range(first, len(ids), stride):
            end = min(begin + stride, len(ids))  # targets ids[begin:end]
            start = max(0, end - 1 - block + 1)
            inputs = torch.tensor([ids[start : end - 1]], device=device)
            state = None
            if states is not None:
                state = torch.from_numpy(states[start : end - 1]).float()[None].to(device)
            yield begin, model(inputs, state=state)[0, begin - 1 - start :].float()


def strided_nll(
    model, ids: list[int], first: int, states: np.ndarray | None = None
) -> tuple[float, int]:
    """Summed NLL (nats) of ids[first:] as `strided_logits` predicts them, and the count."""
    total, count = 0.0, 0
    for begin, logits in strided_logits(model, ids, first, states):
        targets = torch.tensor(ids[begin : begin + len(logits)], device=logits.device)
        total += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item()
        count += len(logits)
    return total, count


@dataclass
class Played:
    """What a model played on from each usable performance's prompt, and what was played."""

    usable: list[Notes]
    """The performances long enough for the prompt and the continuation."""
    played: list[Notes]
    """The model's continuation of each, in the window compared."""
    real: list[Notes]
    """The performer's, in the same window."""
    prompts: list[list[int]]
    new: list[list[int]]
    """The events generated after each prompt."""
    limits: list[float] | None
    """The hold limits applied (None: none)."""


def play(
    generator,
    performances: list[Notes],
    prompt_seconds: float,
    seconds: float,
    seed: int = 0,
    rules: str = "all",
    processor: Callable[[list[int]], NoteRules] | None = None,
    **options,
) -> Played:
    """Continue each performance long enough for `prompt_seconds + seconds`.

    Args:
        generator: a loaded music checkpoint.
        rules: `valid` or `all`, as `seqgen generate --rules` (`MusicGenerate.rules`).
        processor: `NoteRules` made otherwise than `rules` make them (an ablation); the
            hold limits reported are still those of `rules`.
        options: generation settings (temperature, top_p, ...).
    """
    begin = round(prompt_seconds * STEPS_PER_SECOND)
    end = begin + round(seconds * STEPS_PER_SECOND)
    usable = [p for p in performances if len(p) and int(p.end.max()) >= end]
    if not usable:
        raise DataError(
            f"no performance lasts {prompt_seconds + seconds:g} s (prompt_seconds + "
            "continue_seconds)"
        )
    bos = generator.tokenizer.bos_id
    prompts = [[bos, *cut_events(encode_notes(p).astype(np.int64), begin).tolist()] for p in usable]
    most = round(seconds * EVENTS_PER_SECOND_CAP)  # the clock stops each row in time
    progress = Progress("generated", round(len(usable) * seconds), "s of music")
    played_steps = 0  # counted whole, so the seconds shown add up exactly

    def moved_on(steps: int) -> None:
        nonlocal played_steps
        played_steps += steps
        progress.set(played_steps / STEPS_PER_SECOND)

    clock = Clock(end - begin, on_time=moved_on)
    limits = ruled_limits(rules, generator.task.hold_limits)
    new = generator.continue_ids(
        prompts,
        **{
            **options,
            "max_new_tokens": most,
            "min_new_tokens": most,
            "seed": seed,
            "stop_fn": clock,
            "processor": processor or rule_processor(rules, limits),
        },
    )
    progress.finish()  # a row that ran out of events stops short of its seconds
    played = [
        window(decode_events([*p[1:], *n]), begin, end) for p, n in zip(prompts, new, strict=True)
    ]
    real = [window(p, begin, end) for p in usable]
    return Played(usable, played, real, prompts, new, limits)


def continuations(
    generator,
    performances: list[Notes],
    prompt_seconds: float,
    seconds: float,
    seed: int = 0,
    bootstrap_samples: int = 200,
    rules: str = "all",
    **options,
) -> dict[str, Any]:
    """Continue each performance (`play`) and compare: the report of
    `seqgen evaluate --continue_seconds`."""
    found = play(generator, performances, prompt_seconds, seconds, seed, rules, **options)
    usable, played, real = found.usable, found.played, found.real
    begin = round(prompt_seconds * STEPS_PER_SECOND)
    end = begin + round(seconds * STEPS_PER_SECOND)
    nats, scored = 0.0, 0
    for prompt, performance in zip(found.prompts, usable, strict=True):
        truth = prompt + events_after(encode_notes(performance).astype(np.int64), begin, end)
        total, count = strided_nll(generator.model, truth, len(prompt), generator.states(truth))
        nats, scored = nats + total, scored + count
    weights = bootstrap_weights(len(usable), bootstrap_samples, seed)
    resampled = resampled_overlap(played, real, weights)
    compared = overlap(played, real)
    later = [p for p in usable if int(p.end.max()) >= 2 * end - begin]
    return {
        "performances": len(usable),
        "too_short": len(performances) - len(usable),
        "prompt_seconds": prompt_seconds,
        "seconds": seconds,
        "overlap": compared,
        "overlap_interval": {
            k: [float(np.percentile(resampled[k], 2.5)), float(np.percentile(resampled[k], 97.5))]
            for k in compared
        },
        "overlap_with_held_out": overlap(played, usable),
        # a yardstick: what the performer played in the next `seconds`, against the same
        # real continuation (the music of one piece moves on too)
        "performer_later": {
            "performances": len(later),
            "overlap": overlap(
                [window(p, end, 2 * end - begin) for p in later],
                [window(p, begin, end) for p in later],
            )
            if later
            else None,
        },
        "failures": {"generated": failures(played), "real": failures(real)},
        "nll_per_event_real": nats / max(scored, 1),
        "events_generated": sum(map(len, found.new)),
        "rules": rules,
        "hold_limits": found.limits,
        "released_when_held_too_long": sum(
            released_notes(p, n, found.limits)
            for p, n in zip(found.prompts, found.new, strict=True)
        ),
    }


def paired_difference(
    arms: list[tuple[Played, Played]], samples: int = 1000, seed: int = 0
) -> dict[str, float]:
    """How much the second arm's mean overlap with the real music exceeds the first's, with
    a 95% interval from a paired bootstrap: each draw resamples the performances (the same
    ones for both arms) and averages the difference over the pairs (one per model, each
    pair both arms of one model on the same performances)."""
    count = len(arms[0][0].real)
    if any(len(arm.real) != count or len(arm.played) != count for pair in arms for arm in pair):
        raise ValueError("every arm must continue the same performances")

    # row 0 takes every performance once (the difference itself), the others resample them
    everyone = np.ones((1, count), np.int64)
    weights = np.concatenate([everyone, bootstrap_weights(count, samples, seed)])
    gaps = np.mean(
        [
            resampled_overlap(b.played, b.real, weights)["mean"]
            - resampled_overlap(a.played, a.real, weights)["mean"]
            for a, b in arms
        ],
        axis=0,
    )
    draws = gaps[1:]
    return {
        "difference": float(gaps[0]),
        "low": float(np.percentile(draws, 2.5)),
        "high": float(np.percentile(draws, 97.5)),
        "share_above_zero": float(np.mean(draws > 0)),
    }
