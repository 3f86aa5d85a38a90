"""Timing on the machine at hand: calls taken in turns, so that a busy moment of a shared
machine slows every candidate alike, and the fastest kept."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

TIMED_CALLS = 15  # per candidate, after one warm-up call


def fastest_call(calls: dict[str, Callable[[], object]], times: int = TIMED_CALLS) -> str:
    """The name of the call that runs fastest here (`median_seconds`); the first on a tie."""
    medians = median_seconds(calls, times)
    return min(medians, key=medians.__getitem__)


def median_seconds(
    calls: dict[str, Callable[[], object]], times: int = TIMED_CALLS
) -> dict[str, float]:
    """The median seconds of `times` calls of each entry, taken in turns
    (`seconds_in_turns`), under inference mode as decoding runs."""
    with torch.inference_mode():
        seconds = seconds_in_turns(calls, times)
    return {name: statistics.median(taken) for name, taken in seconds.items()}


def seconds_in_turns(
    calls: dict[str, Callable[[], object]], times: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds of each of `times` calls of every entry, after `warmup` calls of each, taken in
    turns (one call of every entry, then the next round) so that a busy moment of the machine
    slows all alike."""
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for turn in range(warmup + times):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            if turn >= warmup:
                seconds[name].append(time.perf_counter() - started)
    return seconds
