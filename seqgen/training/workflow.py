"""The one training workflow of every task: `seqgen pretrain` (from scratch) and `seqgen finetune`
(from a checkpoint) are this code with different defaults.

    RunStart (the checkpoint to resume or start from, resolved once) -> task.load()
    -> model and tokenizer (the checkpoint's, or new) -> task.training_data()
    -> data module -> LMModule + Lightning Trainer -> out_dir/final + a report
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.loggers import CSVLogger

from seqgen import checkpoint as ckpt
from seqgen.config import ModelConfig, TrainConfig
from seqgen.errors import ConfigError
from seqgen.evaluation import write_json
from seqgen.generation.decoding import recipe_defaults
from seqgen.registry import task_class
from seqgen.tasks import Examples, Windows
from seqgen.tokenizer import TokenizerConfig
from seqgen.training.datamodules import ExampleDataModule, WindowDataModule
from seqgen.training.module import LMModule
from seqgen.training.start import RunStart
from seqgen.training.trainer import BEST, build_trainer, finish_loggers

log = logging.getLogger("seqgen")


@dataclass
class RunConfig:
    """Train a model for a task, from scratch or from a checkpoint. The task's data options
    are the `data.*` keys (see `seqgen finetune --task NAME --help`)."""

    task: str | None = None
    """The task to train (its name, e.g. text, translation, music)."""
    init_from: str | None = None
    """Checkpoint or run directory to start from, or `none` to train from scratch."""
    model: ModelConfig = field(default_factory=lambda: ModelConfig.from_preset("small"))
    """The model, when training from scratch (a checkpoint brings its own)."""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    """The tokenizer built on the task's training data, when training from scratch."""
    train: TrainConfig = field(default_factory=TrainConfig)
    data: Any = None
    """The task's data options (its `data_config` dataclass; None: its defaults)."""
    lm_weight: float | None = None
    """Auxiliary LM loss weight over the whole sequence (None: the task's default; 0: off)."""
    dropout: float | None = None
    """Dropout while training (None: the checkpoint's, or model.dropout from scratch)."""
    out_dir: str = "runs/train"
    """Run directory: checkpoints/, final/ (the finished model) and logs/."""
    seed: int = 1337
    """Seed for initialisation and data order."""
    resume: str | None = None
    """Resume training: `last` (the newest checkpoint in out_dir) or a checkpoint directory."""
    generation: dict[str, Any] = field(default_factory=dict)
    """Generation options the trained checkpoint decodes with where a call does not set
    them, over the task's own (e.g. minimum Bayes risk: `{mbr_samples: 16, num_beams: 1,
    temperature: 0.7}`); `generate`, `evaluate`, `serve` and `seqgen.load` use them."""
    overwrite: bool = False
    """Delete the previous run in out_dir (its checkpoints/, final/, best/, logs/) before
    training; without it, a new run in the directory of an old one is an error."""


def run(cfg: RunConfig, report_path: str | None = None) -> dict[str, Any]:
    """Train, save `out_dir/final`, validate; returns (and optionally writes) the report."""
    started = time.perf_counter()
    if cfg.task is None:
        raise ConfigError("set the task: --task NAME (or `task:` in the config)")
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    start = RunStart.resolve(cfg)
    if 0 < cfg.train.max_steps <= cfg.train.warmup_steps:
        log.warning(
            "train.max_steps (%d) <= train.warmup_steps (%d): the learning rate never "
            "leaves its warm-up",
            cfg.train.max_steps,
            cfg.train.warmup_steps,
        )
    task = task_class(cfg.task)(cfg.data, start.block_size)
    generation = recipe_defaults(cfg.generation, task.generation_defaults())
    start.check_task(task)
    start.check_data_settings(task)
    splits = task.load()
    model, tokenizer, started_from = start.model(task, splits)
    vocab_before = tokenizer.vocab_size
    tokenizer.add_special_tokens(task.special_tokens())
    model.resize_vocab(tokenizer.vocab_size)
    added = tokenizer.vocab_size - vocab_before
    if added:
        last = vocab_before + added - 1
        ids = f"id {last}" if added == 1 else f"ids {vocab_before}-{last}"
        log.info("added %d special token%s (%s)", added, "s" if added > 1 else "", ids)
    if cfg.dropout is not None:
        model.set_dropout(cfg.dropout)
    training_data = task.training_data(splits, tokenizer)
    datamodule = build_datamodule(training_data, cfg, tokenizer.pad_id)
    token_bytes = tokenizer.token_byte_lengths()
    module = LMModule(
        model.config,
        cfg.train,
        task=task.name,
        token_bytes=token_bytes if any(token_bytes) else None,  # no bits per byte for events
        lm_weight=task.lm_weight if cfg.lm_weight is None else cfg.lm_weight,
        meta={
            "task_options": {**task.options(), **task.learned_options(splits)},
            "generation": generation,
            "init_from": started_from,
            "run_config": ckpt.jsonable(replace(cfg, model=model.config)),
        },
        model=model,
    )
    for path in start.previous:  # --overwrite: removed only now that everything else is ready
        log.warning("--overwrite: removing %s", path)
        shutil.rmtree(path)
    out_dir = Path(cfg.out_dir)
    trainer = build_trainer(cfg.train, out_dir, tokenizer, model=model)
    try:
        report = fit_and_validate(trainer, module, datamodule, out_dir, start.resume_from)
    finally:
        finish_loggers(trainer)
    draws = (
        trainer.global_step
        * cfg.train.batch_size
        * cfg.train.accumulate_grad_batches
        * trainer.world_size
    )
    epoch_size = (
        len(training_data.train)
        if isinstance(training_data, Examples)
        else datamodule.draws_per_epoch
    )
    report.update(
        epochs=draws / epoch_size,
        wall_seconds=time.perf_counter() - started,
        vocab_size=tokenizer.vocab_size,
        model=model.config.to_dict(),
        train=ckpt.jsonable(cfg.train),
        train_examples=len(splits.train),
        val_examples=len(splits.val),
        init_from=started_from,
        data_stats=dict(task.stats),
    )
    if trainer.is_global_zero:  # one report under distributed training
        write_json(report_path, report)
    return report


def build_datamodule(
    data: Examples | Windows, cfg: RunConfig, pad_id: int
) -> pl.LightningDataModule:
    """Batches of the task's training data: examples of similar length, or drawn windows."""
    if isinstance(data, Examples):
        return ExampleDataModule(
            data.train,
            data.val,
            cfg.train.batch_size,
            pad_id,
            cfg.seed,
            cfg.train.num_workers,
            val_batches=cfg.train.val_batches,
        )
    if isinstance(data, Windows):
        return WindowDataModule(
            data.train,
            data.val,
            cfg.train.batch_size,
            cfg.train.num_workers,
            cfg.seed,
            cfg.train.val_batches,
        )
    raise TypeError(f"training_data must return Examples or Windows, not {type(data).__name__}")


def fit_and_validate(
    trainer: pl.Trainer,
    module: LMModule,
    datamodule: pl.LightningDataModule,
    out_dir: Path,
    resume_from: Path | None,
) -> dict[str, Any]:
    """Fit (resuming when asked), save `out_dir/final`, validate: the report fields that every
    training workflow shares."""
    fit_started = time.perf_counter()
    try:
        trainer.fit(module, datamodule, ckpt_path=str(resume_from) if resume_from else None)
    except BaseException:
        for logger in trainer.loggers:  # a fit that failed before logging leaves no trace
            if isinstance(logger, CSVLogger):
                logs = Path(logger.log_dir)
                if logs.is_dir() and not any(logs.iterdir()):
                    logs.rmdir()
        raise
    fit_seconds = time.perf_counter() - fit_started
    if trainer.is_global_zero:
        ckpt.prune_checkpoints(out_dir / "checkpoints", module.train_config.keep_checkpoints)
    trainer.save_checkpoint(out_dir / "final", weights_only=False)
    train_loss = trainer.callback_metrics.get("train_loss")  # validate() resets the metrics
    metrics = trainer.validate(module, datamodule, verbose=False)[0]
    report = {
        "val_loss": metrics["val_loss"],
        "train_loss": float(train_loss) if train_loss is not None else math.nan,
    }
    if "val_bpb" in metrics:
        report["val_bpb"] = metrics["val_bpb"]
    best = next((c for c in trainer.checkpoint_callbacks if c.monitor == "val_loss"), None)
    if best is not None and not best.best_model_path:
        log.warning(
            "train.keep_best: no validation ran during training (val_every_n_steps > "
            "steps), so there is no %s/%s",
            out_dir,
            BEST,
        )
    elif best is not None:
        report.update(
            best_val_loss=float(best.best_model_score),
            best_step=ckpt.read_meta(out_dir / BEST).get("step"),
            best_checkpoint=str(out_dir / BEST),
        )
    return {
        **report,
        "train_tokens": module.train_tokens,
        "tokens_per_second": module.tokens_this_fit / fit_seconds,
        "mfu": module.mfu(module.tokens_this_fit / fit_seconds),
        "steps": trainer.global_step,
        "skipped_steps": module.bad_steps,
        "train_seconds": fit_seconds,
        "params": module.model.num_params(),
        "precision": trainer.precision,
        "checkpoint": str(out_dir / "final"),
    }
