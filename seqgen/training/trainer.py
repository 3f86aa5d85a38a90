"""The Lightning Trainer for every task: seqgen checkpoints, the configured loggers and
budget, progress lines where no terminal shows a bar (in a file or a pipe Lightning draws
its bar only at the end), and Lightning's noise filtered."""

from __future__ import annotations

import hashlib
import logging
import shutil
import sys
import time
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.checkpoint_io import CheckpointIO
from pytorch_lightning.callbacks import Callback, ModelCheckpoint, Timer
from pytorch_lightning.loggers import CSVLogger, Logger

from seqgen import checkpoint as ckpt
from seqgen.config import TrainConfig, parse_duration
from seqgen.cpu import native_bf16, training_step_seconds
from seqgen.errors import CheckpointError, ConfigError
from seqgen.progress import clock
from seqgen.tokenizer import Tokenizer

log = logging.getLogger("seqgen")
BEST = "best"  # out_dir/best: the lowest val_loss, with train.keep_best


class _DropChatter(logging.Filter):
    """Hide Lightning's advertising and restated defaults; keep everything else it says."""

    NOISE = ("Tip: For seamless", "was configured so", "`isinstance(treespec, LeafSpec)`")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in self.NOISE)


def quiet_lightning() -> None:
    # Lightning's rank-zero messages come from one of these loggers (which one depends on
    # import order); a filter on the emitting logger applies whatever handlers print it.
    for name in (
        "pytorch_lightning.utilities.rank_zero",
        "lightning_fabric.utilities.rank_zero",
        "lightning_utilities.core.rank_zero",
    ):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropChatter) for f in logger.filters):
            logger.addFilter(_DropChatter())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # The samplers restart a resumed epoch where it stopped (datamodules.resume_position),
    # which Lightning cannot see: its warning does not apply.
    warnings.filterwarnings("ignore", message=r".*your dataloader is not resumable.*")
    # A run directory holds more than checkpoints (logs/, final/, best/ with train.keep_best).
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    # Lightning logs every log_every_n_steps optimizer steps across epochs, so an epoch
    # shorter than that still logs: the warning does not apply to a step-budgeted run.
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")
    # A step with a non-finite loss returns None on purpose (the divergence guard says so).
    warnings.filterwarnings("ignore", message=r"`training_step` returned `None`.*")


BF16_MIN_SPEEDUP = 1.1  # bf16 steps learn a little less each: it must be clearly faster


def resolve_precision(cfg: TrainConfig, model: torch.nn.Module | None = None) -> str:
    """The Lightning precision for cfg.precision on this machine. `auto` is bf16-mixed on a
    GPU with bf16; on a CPU that multiplies bf16 in hardware (AMX or AVX512-BF16) it is
    whichever of fp32 and bf16 autocast runs `model`'s training step faster, timed here on
    its batch shape (bf16 must be BF16_MIN_SPEEDUP times faster); elsewhere 32-true."""
    on_gpu = cfg.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    on_cpu = cfg.accelerator == "cpu" or (cfg.accelerator == "auto" and not on_gpu)
    fast_bf16 = torch.cuda.is_bf16_supported() if on_gpu else on_cpu and native_bf16()
    if cfg.precision == "auto":
        if not fast_bf16:
            return "32-true"
        if on_gpu or model is None or not single_process(cfg):
            return "bf16-mixed"  # processes timing apart might choose apart
        return faster_precision(cfg, model)
    if cfg.precision == "bf16-mixed" and on_cpu and not fast_bf16:
        log.warning(
            "train.precision bf16-mixed: this CPU has no bf16 hardware (AMX or "
            "AVX512-BF16), so training runs many times slower than 32-true; "
            "train.precision auto picks the faster one"
        )
    return cfg.precision


def single_process(cfg: TrainConfig) -> bool:
    return cfg.num_nodes == 1 and str(cfg.devices) in ("auto", "1")


def faster_precision(cfg: TrainConfig, model: torch.nn.Module) -> str:
    """32-true or bf16-mixed, whichever trains `model` faster on this CPU, by timing both."""
    started = time.perf_counter()
    seconds = training_step_seconds(model, cfg.batch_size, model.config.block_size)
    fp32, bf16 = seconds["32-true"], seconds["bf16-mixed"]
    chosen = "bf16-mixed" if fp32 >= BF16_MIN_SPEEDUP * bf16 else "32-true"
    log.info(
        "train.precision auto: %s (a training step in bf16 autocast takes %.3g s, in "
        "fp32 %.3g s: %.2fx; timed in %.1f s)",
        chosen,
        bf16,
        fp32,
        fp32 / bf16,
        time.perf_counter() - started,
    )
    return chosen


def build_trainer(
    cfg: TrainConfig, out_dir: Path, tokenizer: Tokenizer, model: torch.nn.Module | None = None
) -> pl.Trainer:
    """The Lightning Trainer for any task: seqgen checkpoints, CSV logs, the configured budget.

    Pass the model to train so that `precision: auto` can time it. The data modules shard
    their training batches across distributed ranks themselves (so that a resumed epoch
    goes on where it stopped on every rank), and every rank validates on the whole set.
    """
    quiet_lightning()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    checkpoints = ModelCheckpoint(
        dirpath=out_dir / "checkpoints",
        filename="step-{step:07d}",
        auto_insert_metric_name=False,
        every_n_train_steps=cfg.checkpoint_every_n_steps,
        save_top_k=cfg.keep_checkpoints,  # the newest ones
        monitor="step",
        mode="max",
        save_on_train_epoch_end=False,
    )
    checkpoints.FILE_EXTENSION = ""  # a checkpoint is a directory
    callbacks = [checkpoints]
    if cfg.keep_best:
        best = ModelCheckpoint(
            dirpath=out_dir,
            filename=BEST,
            monitor="val_loss",
            mode="min",
            save_top_k=1,
            save_on_train_epoch_end=False,
            enable_version_counter=False,
        )
        best.FILE_EXTENSION = ""
        callbacks.append(best)
    live_bar = cfg.progress_bar and sys.stderr.isatty()
    if cfg.progress_bar and not live_bar:  # a file or a pipe: a bar there shows only at the end
        callbacks.append(ProgressLines(cfg.progress_every_seconds))
    return pl.Trainer(
        max_steps=cfg.max_steps,
        max_time=timedelta(seconds=parse_duration(cfg.max_time)) if cfg.max_time else None,
        max_epochs=cfg.max_epochs if cfg.max_epochs is not None else -1,
        precision=resolve_precision(cfg, model),
        accumulate_grad_batches=cfg.accumulate_grad_batches,
        gradient_clip_val=None,  # LMModule.on_before_optimizer_step clips, from its own norm
        val_check_interval=cfg.val_every_n_steps * cfg.accumulate_grad_batches,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        log_every_n_steps=cfg.log_every_n_steps,
        logger=build_loggers(cfg.logger, out_dir) or False,
        callbacks=callbacks,
        plugins=[SeqgenCheckpointIO(tokenizer)],
        enable_progress_bar=live_bar,
        enable_model_summary=False,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        strategy=cfg.strategy,
        num_nodes=cfg.num_nodes,
        default_root_dir=out_dir,
        use_distributed_sampler=False,
    )


def build_loggers(names: list[str], out_dir: Path) -> list[Logger]:
    """Lightning's own loggers, in out_dir/logs: CSV adds a version per fit; TensorBoard and
    W&B continue one run across resumes (the x axis is the global step)."""
    loggers: list[Logger] = []
    for name in names:
        try:
            if name == "csv":
                loggers.append(CSVLogger(out_dir, name="logs"))
            elif name == "tensorboard":
                from pytorch_lightning.loggers import TensorBoardLogger

                loggers.append(
                    TensorBoardLogger(
                        out_dir, name="logs", version="tensorboard", default_hp_metric=False
                    )
                )
            else:
                from pytorch_lightning.loggers import WandbLogger

                loggers.append(
                    WandbLogger(
                        project="seqgen",
                        name=out_dir.name,
                        save_dir=str(out_dir / "logs"),
                        resume="allow",
                        id=hashlib.sha1(str(out_dir.resolve()).encode()).hexdigest()[:16],
                    )
                )
        except ModuleNotFoundError as err:  # the package is named as the logger
            raise ConfigError(f"train.logger {name}: `pip install {name}` first ({err})") from None
    return loggers


def finish_loggers(trainer: pl.Trainer) -> None:
    """End the loggers' runs: Lightning leaves a W&B run open, and the next training in
    this process (another out_dir) would log into it."""
    if any(type(logger).__name__ == "WandbLogger" for logger in trainer.loggers):
        wandb = sys.modules.get("wandb")  # imported by the logger's run, if one started
        if wandb is not None and wandb.run is not None:
            wandb.finish()


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

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        now = time.monotonic()
        first = self.last == 0.0 and trainer.global_step > self.first_step
        if first or (self.last and now - self.last >= self.every_seconds):
            self.last = now
            log.info("%s", self.line(trainer, now))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        shown = [
            f"{key} {float(trainer.callback_metrics[key]):.4f}"
            for key in ("val_loss", "val_bpb")
            if key in trainer.callback_metrics
        ]
        log.info("step %s  %s", f"{trainer.global_step:,}", "  ".join(shown))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        log.info("%s (done)", self.line(trainer, time.monotonic(), final=True))

    def line(self, trainer: pl.Trainer, now: float, final: bool = False) -> str:
        step, total = trainer.global_step, trainer.max_steps
        parts = [f"step {step:,}" + (f"/{total:,} ({step / total:.0%})" if total > 0 else "")]
        metrics = trainer.callback_metrics
        if "train_loss" in metrics:
            parts.append(f"train_loss {float(metrics['train_loss']):.4f}")
        if "tokens_per_second" in metrics:
            parts.append(f"{float(metrics['tokens_per_second']):,.0f} tokens/s")
        if "mfu" in metrics:
            parts.append(f"mfu {float(metrics['mfu']):.1%}")
        elapsed = now - self.started
        parts.append(f"elapsed {clock(elapsed)}")
        remaining = []
        done = step - self.first_step
        if total > 0 and done > 0:
            remaining.append((total - step) * elapsed / done)
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        if timer is not None and timer.time_remaining("train") is not None:
            remaining.append(timer.time_remaining("train"))
        if remaining and not final:
            parts.append(f"ETA {clock(min(remaining))}")
        return "  ".join(parts)


class SeqgenCheckpointIO(CheckpointIO):
    """Lightning checkpoints in seqgen's directory format, so `trainer.fit(ckpt_path=...)` and
    ModelCheckpoint read and write self-contained, unpickle-free checkpoints."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        rest = dict(checkpoint)
        state = rest.pop("state_dict")
        meta = rest.pop(ckpt.META_KEY)
        prefix = ckpt.MODULE_PREFIX
        weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        ckpt.write_checkpoint(
            path, weights, self.tokenizer, {**meta, "step": rest.get("global_step", 0)}, rest
        )

    def load_checkpoint(
        self, path: Any, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        directory = Path(path)
        meta = ckpt.read_meta(directory)
        state_path = directory / ckpt.STATE_FILE
        if not state_path.is_file():
            raise CheckpointError(
                f"{directory}: no {ckpt.STATE_FILE}; it can be fine-tuned but not resumed"
            )
        try:
            checkpoint = torch.load(state_path, map_location=map_location, weights_only=True)
        except Exception as err:  # torch raises several types for damaged or unsafe files
            first_line = (str(err).strip() or type(err).__name__).splitlines()[0]
            raise CheckpointError(
                f"{state_path}: corrupt or unsafe training state ({first_line})"
            ) from None
        weights = ckpt.read_weights(directory)
        if "lm_head.weight" not in weights and "transformer.wte.weight" in weights:
            weights["lm_head.weight"] = weights["transformer.wte.weight"]
        checkpoint["state_dict"] = {ckpt.MODULE_PREFIX + k: v for k, v in weights.items()}
        checkpoint[ckpt.META_KEY] = meta
        return checkpoint

    def remove_checkpoint(self, path: Any) -> None:
        shutil.rmtree(path, ignore_errors=True)
