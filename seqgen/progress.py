"""Progress of long work, visible wherever the output goes: in a terminal a live line (or
Lightning's bar, for training), in a file or a pipe plain log lines, the first at once, then
every few seconds, and at the end. `Progress` reports any work that counts items (documents
tokenized, sentences translated, windows scored, tokens generated); training has its own,
`seqgen.training.trainer.ProgressLines`.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

log = logging.getLogger("seqgen")


QUIET_SECONDS = 1.0  # work shorter than this shows no progress
EVERY_SECONDS = 15.0  # between lines in a file or a pipe
REDRAW_SECONDS = 0.2  # between redraws of a terminal line


def clock(seconds: float) -> str:
    return str(timedelta(seconds=round(max(seconds, 0.0))))


def amount(value: float) -> str:
    """1,234 / 56.7k / 8.9M: counts as a person reads them in a progress line."""
    if value >= 1e6:
        return f"{value / 1e6:.1f}M"
    if value >= 1e5:
        return f"{value / 1e3:.0f}k"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


class Progress:
    """`translated 120/1,000 sentences (12%)  9.8/s  elapsed 0:00:12  ETA 0:01:30`.

    Call it with the number of items just finished (it is an `on_done` callback for
    `Generator.generate_many`), or `set` the amount done; `finish` ends it (reaching `total`
    does too). Work that ends within a second shows nothing. With `at_most`, `total` is a
    bound that work may stop short of (no percentage or ETA then).
    """

    def __init__(
        self,
        verb: str,
        total: float | None = None,
        unit: str = "",
        *,
        at_most: bool = False,
        every_seconds: float = EVERY_SECONDS,
    ) -> None:
        self.verb, self.total, self.unit, self.at_most = verb, total, unit, at_most
        self.every_seconds = every_seconds
        self.live = sys.stderr.isatty()
        self.done = 0.0
        self.started = time.monotonic()
        self.shown = 0.0  # when the last line was written (0: never)
        self.finished = False

    def __call__(self, n: float = 1) -> None:
        self.set(self.done + n)

    def set(self, done: float) -> None:
        self.done = done
        now = time.monotonic()
        if self.total is not None and done >= self.total and not self.at_most:
            self.finish()
            return
        wait = REDRAW_SECONDS if self.live else self.every_seconds
        if now - self.started >= QUIET_SECONDS and (not self.shown or now - self.shown >= wait):
            self.shown = now
            self._write(self.line(now))

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        now = time.monotonic()
        if self.shown or now - self.started >= QUIET_SECONDS:
            self._write(self.line(now) + ("" if self.live else " (done)"), end=True)

    def line(self, now: float) -> str:
        count = amount(self.done)
        if self.total is not None:
            count += f"/{amount(self.total)}" if not self.at_most else ""
        parts = [f"{self.verb} {count}" + (f" {self.unit}" if self.unit else "")]
        if self.total and self.at_most:
            parts[0] += f" (at most {amount(self.total)})"
        elif self.total:
            parts[0] += f" ({min(self.done / self.total, 1.0):.0%})"
        elapsed = now - self.started
        if elapsed > 0 and self.done:
            parts.append(f"{amount(self.done / elapsed)}/s")
        parts.append(f"elapsed {clock(elapsed)}")
        if self.total and not self.at_most and 0 < self.done < self.total:
            parts.append(f"ETA {clock((self.total - self.done) * elapsed / self.done)}")
        return "  ".join(parts)

    def _write(self, text: str, end: bool = False) -> None:
        if self.live:
            print(f"\r\033[K{text}", end="\n" if end else "", file=sys.stderr, flush=True)
        else:
            log.info("%s", text)


@contextmanager
def dataset_bars() -> Iterator[None]:
    """Hugging Face datasets' own progress bars only in a terminal: in a file each redraw is
    a line of noise (seqgen logs what it does there instead)."""
    from datasets.utils import logging as datasets_logging

    was_enabled = datasets_logging.is_progress_bar_enabled()
    if not sys.stderr.isatty():
        datasets_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            datasets_logging.enable_progress_bar()
