"""The one training loop for every task: a LightningModule around the GPT."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import Timer

from seqgen.checkpoint import META_KEY, latest_checkpoint
from seqgen.config import ModelConfig, TrainConfig, parse_duration
from seqgen.data import IGNORE_INDEX
from seqgen.errors import TrainingDiverged
from seqgen.model import GPT
from seqgen.training.mfu import peak_flops, training_flops_per_token

log = logging.getLogger("seqgen")
RNG_KEY = "torch_rng_state"


def masked_nll(
    logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Per-token negative log-likelihood (B, T) in fp32; 0 where targets == IGNORE_INDEX.
    With label_smoothing, the cross-entropy against the smoothed target distribution."""
    nll = F.cross_entropy(
        logits.flatten(0, 1).float(),
        targets.flatten(),
        ignore_index=IGNORE_INDEX,
        reduction="none",
        label_smoothing=label_smoothing,
    )
    return nll.view_as(targets)


def sequence_loss(
    logits: torch.Tensor,
    batch: dict[str, torch.Tensor],
    lm_weight: float = 0.0,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, per-token nll). The loss averages the nll over `loss_mask` (1 = a target token;
    every non-ignored token when absent; other values weigh each token), plus `lm_weight` x
    the nll over all tokens (GPT-1's auxiliary language-modelling loss)."""
    targets = batch["targets"]
    nll = masked_nll(logits, targets, label_smoothing)
    scored = (targets != IGNORE_INDEX).float()
    mask = batch["loss_mask"].float() * scored if "loss_mask" in batch else scored
    loss = (nll * mask).sum() / mask.sum().clamp(min=1.0)
    if lm_weight:
        loss = loss + lm_weight * (nll * scored).sum() / scored.sum().clamp(min=1.0)
    return loss, nll


class LMModule(pl.LightningModule):
    """Trains a GPT on batches of {input_ids, targets[, loss_mask]}.

    Args:
        model_config: the GPT to build (or `model`, an existing one, e.g. loaded for fine-tuning).
        train: optimisation settings.
        task: name stored in checkpoints.
        token_bytes: UTF-8 bytes per token id; enables the `val_bpb` metric.
        lm_weight: auxiliary LM loss weight (GPT-1 fine-tuning uses 0.5).
        meta: extra entries for the checkpoint's config.json (e.g. the task's options).
    """

    def __init__(
        self,
        model_config: ModelConfig,
        train: TrainConfig,
        task: str = "text",
        token_bytes: list[int] | None = None,
        lm_weight: float = 0.0,
        meta: dict[str, Any] | None = None,
        model: GPT | None = None,
    ) -> None:
        super().__init__()
        self.model = model if model is not None else GPT(model_config)
        self.train_config, self.task, self.lm_weight, self.meta = train, task, lm_weight, meta or {}
        self.register_buffer(
            "token_bytes",
            torch.tensor(token_bytes, dtype=torch.float64) if token_bytes is not None else None,
            persistent=False,
        )
        self.train_tokens = 0
        self.bad_steps = 0  # steps skipped for a non-finite loss or gradient
        self._fit_started, self._fit_start_tokens = 0.0, 0
        self._flops_per_second: float | None = None
        self._flops_per_token = 0.0
        self._compiled = False
        self._val_sums: torch.Tensor | None = None

    def forward(self, idx: torch.Tensor, state: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(idx, state=state)

    # ------------------------------------------------------------ training

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        logits = self.model(batch["input_ids"], state=batch.get("state"))
        loss, _ = sequence_loss(logits, batch, self.lm_weight, self.train_config.label_smoothing)
        self.train_tokens += batch["input_ids"].numel() * self.trainer.world_size  # all ranks
        if not torch.isfinite(loss):
            self._bad_step(f"the loss is {loss.item()}")
            return None  # Lightning then skips this step's backward and update
        self.log("train_loss", loss, prog_bar=True)
        self.log("lr", self.optimizers().param_groups[0]["lr"])
        self.log("train_tokens", float(self.train_tokens))
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Clip the gradient norm to train.grad_clip, from the one norm that also guards the
        step: a NaN or infinite gradient is never applied (without gradients AdamW leaves every
        weight, and its moments, as they were)."""
        params = [
            p for group in optimizer.param_groups for p in group["params"] if p.grad is not None
        ]
        if not params:
            return
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if not torch.isfinite(norm):
            self._bad_step(f"the gradient norm is {norm.item()}")
            for p in params:
                p.grad = None
        elif self.train_config.grad_clip is not None:
            torch.nn.utils.clip_grads_with_norm_(params, self.train_config.grad_clip, norm)

    def _bad_step(self, reason: str) -> None:
        """Skip a step that would make the weights non-finite; stop when too many were."""
        self.bad_steps += 1
        cfg, step = self.train_config, self.trainer.global_step
        if self.bad_steps > cfg.max_bad_steps:
            lr = self.optimizers().param_groups[0]["lr"]
            latest = latest_checkpoint(Path(self.trainer.default_root_dir) / "checkpoints")
            kept = f"{latest} holds the last finite weights" if latest else "none was saved"
            raise TrainingDiverged(
                f"training diverged at step {step}: {reason}. Nothing from this step on was "
                f"applied or saved ({kept}). Lower train.learning_rate (the rate was "
                f"{lr:.3g}), lengthen train.warmup_steps, or use train.precision 32-true; "
                "train.max_bad_steps N skips up to N such steps instead of stopping"
            )
        log.warning(
            "step %d: %s; the step is skipped (%d of train.max_bad_steps %d)",
            step,
            reason,
            self.bad_steps,
            cfg.max_bad_steps,
        )

    def on_fit_start(self) -> None:
        self._fit_started, self._fit_start_tokens = time.perf_counter(), self.train_tokens
        peak = peak_flops(self.device, self.train_config.peak_flops)
        self._flops_per_second = None if peak is None else peak * self.trainer.world_size
        self._flops_per_token = training_flops_per_token(self.model, self.model.config.block_size)
        if self.train_config.compile and not self._compiled:
            self.model.compile()  # in place: the state dict keeps its names
            self._compiled = True

    def mfu(self, tokens_per_second: float) -> float | None:
        """Model FLOPs utilisation at `tokens_per_second` (all ranks), if the peak is known."""
        if self._flops_per_second is None:
            return None
        return tokens_per_second * self._flops_per_token / self._flops_per_second

    @property
    def tokens_this_fit(self) -> int:
        """Training tokens since the current `fit` started (a resumed run counts from there)."""
        return self.train_tokens - self._fit_start_tokens

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        elapsed = time.perf_counter() - self._fit_started
        if elapsed > 0:
            self.log("tokens_per_second", self.tokens_this_fit / elapsed)
            mfu = self.mfu(self.tokens_this_fit / elapsed)
            if mfu is not None:
                self.log("mfu", mfu)

    # ------------------------------------------------------------ validation

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        _, nll = sequence_loss(self.model(batch["input_ids"], state=batch.get("state")), batch)
        targets = batch["targets"]
        scored = targets != IGNORE_INDEX
        if "loss_mask" in batch:
            scored &= batch["loss_mask"].bool()
        sums = torch.stack(
            [
                nll[scored].double().sum(),
                scored.sum().double(),
                self.token_bytes[targets[scored]].sum()
                if self.token_bytes is not None
                else torch.zeros((), dtype=torch.float64, device=nll.device),
            ]
        )
        self._val_sums = sums if self._val_sums is None else self._val_sums + sums

    def on_validation_epoch_end(self) -> None:
        if self._val_sums is None:
            return
        nats, tokens, num_bytes = self.trainer.strategy.reduce(
            self._val_sums, reduce_op="sum"
        ).tolist()
        self._val_sums = None
        self.log("val_loss", nats / max(tokens, 1.0), prog_bar=True)
        if self.token_bytes is not None and num_bytes > 0:
            self.log("val_bpb", nats / num_bytes / math.log(2), prog_bar=True)

    # ------------------------------------------------------------ optimisation

    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.train_config
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        # the fused kernel: one pass over all weights instead of a dozen ops per tensor, 3x
        # faster steps of the optimizer itself on CPU (2-3% of a small model's training step)
        fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
        optimizer = torch.optim.AdamW(
            groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), fused=fused or None
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.lr_factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def lr_factor(self, step: int) -> float:
        """Linear warmup, then cosine decay to min_lr_ratio over the training budget."""
        cfg = self.train_config
        if step < cfg.warmup_steps:
            return (step + 1) / (cfg.warmup_steps + 1)
        progress = self.budget_spent(step)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def budget_spent(self, step: int) -> float:
        """Fraction of the budget used: the larger of the step and the wall-clock fractions."""
        spent = 0.0
        if self._trainer is None:
            return spent
        total_steps = self.trainer.estimated_stepping_batches
        if math.isfinite(total_steps) and total_steps > 0:
            spent = step / total_steps
        if self.train_config.max_time is not None:
            timers = [c for c in self.trainer.callbacks if isinstance(c, Timer)]
            if timers:
                elapsed = timers[0].time_elapsed("train")
                spent = max(spent, elapsed / parse_duration(self.train_config.max_time))
        return min(spent, 1.0)

    # ------------------------------------------------------------ checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[META_KEY] = {
            "task": self.task,
            "model": self.model.config.to_dict(),
            "lm_weight": self.lm_weight,
            "train_tokens": self.train_tokens,
            **self.meta,
        }
        # the random state after this step: a resumed run draws the same dropout masks
        checkpoint[RNG_KEY] = torch.get_rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.train_tokens = int(checkpoint.get(META_KEY, {}).get("train_tokens", 0))
        if RNG_KEY in checkpoint:  # absent from checkpoints of older versions
            torch.set_rng_state(checkpoint[RNG_KEY])
