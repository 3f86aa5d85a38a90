"""Training progress as plain lines, for output that is a file or a pipe (a live bar is
drawn only at the end there): the first step at once, then every few seconds, each
validation, and the end."""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, Timer

log = logging.getLogger("seqgen")


def clock(seconds: float) -> str:
    return str(timedelta(seconds=round(max(seconds, 0.0))))


class ProgressLines(Callback):
    """`step 120/1,000 (12%)  train_loss 3.412  24,510 tokens/s  elapsed 0:00:40  ETA 0:04:53`
    after the first step of a fit, then every `every_seconds`; counts continue after a
    resume."""

    def __init__(self, every_seconds: float) -> None:
        self.every_seconds = every_seconds
        self.started = self.last = 0.0
        self.first_step = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.started, self.last, self.first_step = time.monotonic(), 0.0, trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:  # fmt: skip
        now = time.monotonic()
        first = self.last == 0.0 and trainer.global_step > self.first_step
        if first or (self.last and now - self.last >= self.every_seconds):
            self.last = now
            log.info("%s", self.line(trainer, now))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        shown = [f"{key} {float(trainer.callback_metrics[key]):.4f}"
                 for key in ("val_loss", "val_bpb") if key in trainer.callback_metrics]  # fmt: skip
        log.info("step %s  %s", f"{trainer.global_step:,}", "  ".join(shown))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        log.info("%s (done)", self.line(trainer, time.monotonic()))

    def line(self, trainer: pl.Trainer, now: float) -> str:
        step, total = trainer.global_step, trainer.max_steps
        parts = [f"step {step:,}" + (f"/{total:,} ({step / total:.0%})" if total > 0 else "")]
        metrics = trainer.callback_metrics
        if "train_loss" in metrics:
            parts.append(f"train_loss {float(metrics['train_loss']):.4f}")
        if "tokens_per_second" in metrics:
            parts.append(f"{float(metrics['tokens_per_second']):,.0f} tokens/s")
        elapsed = now - self.started
        parts.append(f"elapsed {clock(elapsed)}")
        remaining = []
        done = step - self.first_step
        if total > 0 and done > 0:
            remaining.append((total - step) * elapsed / done)
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        if timer is not None and timer.time_remaining("train") is not None:
            remaining.append(timer.time_remaining("train"))
        if remaining:
            parts.append(f"ETA {clock(min(remaining))}")
        return "  ".join(parts)
