"""Pretrain a language model on a text corpus: tokenizer, packed data, training, report."""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from seqgen import checkpoint as ckpt
from seqgen.config import ModelConfig, TrainConfig, parse_duration
from seqgen.cpu import native_bf16
from seqgen.data import (
    DataConfig,
    TextDataModule,
    cached_tokens,
    load_text_splits,
    tokenizer_fingerprint,
)
from seqgen.errors import CheckpointError
from seqgen.module import LMModule
from seqgen.tokenizer import SentencePieceTokenizer, Tokenizer, TokenizerConfig, load_tokenizer

log = logging.getLogger("seqgen")
TASK = "text"
BEST = "best"  # out_dir/best: the lowest val_loss, with train.keep_best


@dataclass
class PretrainConfig:
    """Pretrain a GPT language model on a text corpus."""

    model: ModelConfig = field(default_factory=lambda: ModelConfig.from_preset("small"))
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out_dir: str = "runs/pretrain"
    """Run directory: checkpoints/, final/ (the finished model) and logs/."""
    seed: int = 1337
    """Seed for initialisation and data order."""
    resume: str | None = None
    """Resume training: `last` (the newest checkpoint in out_dir) or a checkpoint directory."""


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
    # Training windows are drawn at random offsets: after a resume a fresh draw is as good as
    # the interrupted one, so the sampler's position is deliberately not saved.
    warnings.filterwarnings("ignore", message=r".*your dataloader is not resumable.*")
    # A run directory holds more than checkpoints (logs/, final/, best/ with train.keep_best).
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")


def resolve_precision(cfg: TrainConfig) -> str:
    """The Lightning precision for cfg.precision on this machine: `auto` becomes bf16-mixed
    where bf16 is computed in hardware (a GPU with bf16, a CPU with AMX or AVX512-BF16)."""
    on_gpu = cfg.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    on_cpu = cfg.accelerator == "cpu" or (cfg.accelerator == "auto" and not on_gpu)
    fast_bf16 = torch.cuda.is_bf16_supported() if on_gpu else on_cpu and native_bf16()
    if cfg.precision == "auto":
        return "bf16-mixed" if fast_bf16 else "32-true"
    if cfg.precision == "bf16-mixed" and on_cpu and not fast_bf16:
        log.warning("train.precision bf16-mixed: this CPU has no bf16 hardware (AMX or "
                    "AVX512-BF16), so training runs many times slower than 32-true; "
                    "train.precision auto picks the faster one")  # fmt: skip
    return cfg.precision


def build_trainer(cfg: TrainConfig, out_dir: Path, tokenizer: Tokenizer,
                  use_distributed_sampler: bool = True) -> pl.Trainer:  # fmt: skip
    """The Lightning Trainer for any task: seqgen checkpoints, CSV logs, the configured budget.

    Pass use_distributed_sampler=False when the train loader shards itself across ranks.
    """
    quiet_lightning()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    checkpoints = ModelCheckpoint(
        dirpath=out_dir / "checkpoints",
        filename="step-{step:07d}",
        auto_insert_metric_name=False,
        every_n_train_steps=cfg.checkpoint_every_n_steps,
        save_top_k=1,  # with no monitored metric: keep the newest only
        save_on_train_epoch_end=False,
    )
    checkpoints.FILE_EXTENSION = ""  # a checkpoint is a directory
    callbacks = [checkpoints]
    if cfg.keep_best:
        best = ModelCheckpoint(dirpath=out_dir, filename=BEST, monitor="val_loss", mode="min",
                               save_top_k=1, save_on_train_epoch_end=False,
                               enable_version_counter=False)  # fmt: skip
        best.FILE_EXTENSION = ""
        callbacks.append(best)
    return pl.Trainer(
        max_steps=cfg.max_steps,
        max_time=timedelta(seconds=parse_duration(cfg.max_time)) if cfg.max_time else None,
        max_epochs=cfg.max_epochs if cfg.max_epochs is not None else -1,
        precision=resolve_precision(cfg),
        accumulate_grad_batches=cfg.accumulate_grad_batches,
        gradient_clip_val=cfg.grad_clip,
        val_check_interval=cfg.val_every_n_steps * cfg.accumulate_grad_batches,
        check_val_every_n_epoch=None,
        limit_val_batches=cfg.val_batches if cfg.val_batches is not None else 1.0,
        num_sanity_val_steps=0,
        log_every_n_steps=cfg.log_every_n_steps,
        logger=CSVLogger(out_dir, name="logs"),  # logs/version_N: a resumed run adds a version
        callbacks=callbacks,
        plugins=[ckpt.SeqgenCheckpointIO(tokenizer)],
        enable_progress_bar=cfg.progress_bar,
        enable_model_summary=False,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        strategy=cfg.strategy,
        num_nodes=cfg.num_nodes,
        default_root_dir=out_dir,
        use_distributed_sampler=use_distributed_sampler,
    )


def resume_point(resume: str | None, out_dir: Path) -> Path | None:
    """The checkpoint that `resume` (None, `last` or a path) names for a run in out_dir."""
    if resume is None:
        return None
    if resume == "last":
        latest = ckpt.latest_checkpoint(out_dir / "checkpoints")
        final = out_dir / "final"
        candidates = [
            p for p in (latest, final) if p is not None and (p / ckpt.CONFIG_FILE).is_file()
        ]
        if not candidates:
            raise CheckpointError(f"nothing to resume in {out_dir} (no checkpoints/ or final/)")
        return max(candidates, key=lambda p: ckpt.read_meta(p).get("step", -1))
    return ckpt.resolve(resume)


def run(cfg: PretrainConfig, report_path: str | None = None) -> dict[str, Any]:
    """Train, save `out_dir/final`, validate; returns (and optionally writes) the report."""
    started = time.perf_counter()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    out_dir = Path(cfg.out_dir)
    resume_from = resume_point(cfg.resume, out_dir)
    model_config = cfg.model
    if resume_from is not None:
        meta = ckpt.read_meta(resume_from)
        if meta["task"] != TASK:
            raise CheckpointError(
                f"{resume_from} was trained for task {meta['task']!r}, not {TASK!r}"
            )
        tokenizer = load_tokenizer(resume_from)
        model_config = ModelConfig.from_dict(meta["model"])
        asked = {**asdict(cfg.model), "vocab_size": model_config.vocab_size}
        if asked != asdict(model_config):
            log.warning("resuming: the model config comes from %s; the given one is ignored",
                        resume_from)  # fmt: skip
        log.info("resuming from %s (step %s)", resume_from, meta.get("step"))
    train_docs, val_docs, data_key = load_text_splits(cfg.data)
    if resume_from is None:
        if cfg.tokenizer.path:
            tokenizer = load_tokenizer(cfg.tokenizer.path)
        else:
            tokenizer = SentencePieceTokenizer.train(train_docs, cfg.tokenizer)
        model_config = ModelConfig(**{**asdict(cfg.model), "vocab_size": tokenizer.vocab_size})
    key = tokenizer_fingerprint(tokenizer) + data_key
    train_ids = cached_tokens(train_docs, tokenizer, f"{key}-train", cfg.data.cache_dir)
    val_ids = cached_tokens(val_docs, tokenizer, f"{key}-val", cfg.data.cache_dir)
    datamodule = TextDataModule(
        train_ids,
        val_ids,
        model_config.block_size,
        cfg.train.batch_size,
        tokenizer.pad_id,
        cfg.data.num_workers,
    )
    module = LMModule(
        model_config,
        cfg.train,
        task=TASK,
        token_bytes=tokenizer.token_byte_lengths(),
        meta={"pretrain_config": jsonable(replace(cfg, model=model_config))},
    )
    trainer = build_trainer(cfg.train, out_dir, tokenizer)
    report = fit_and_validate(trainer, module, datamodule, out_dir, resume_from)
    report.update(
        wall_seconds=time.perf_counter() - started,
        vocab_size=tokenizer.vocab_size,
        train_corpus_tokens=len(train_ids),
        val_corpus_tokens=len(val_ids),
    )
    write_report(report_path, report, trainer)
    return report


def fit_and_validate(trainer: pl.Trainer, module: LMModule, datamodule: pl.LightningDataModule,
                     out_dir: Path, resume_from: Path | None) -> dict[str, Any]:  # fmt: skip
    """Fit (resuming when asked), save `out_dir/final`, validate: the report fields that every
    training workflow shares."""
    fit_started = time.perf_counter()
    trainer.fit(module, datamodule, ckpt_path=str(resume_from) if resume_from else None)
    fit_seconds = time.perf_counter() - fit_started
    trainer.save_checkpoint(out_dir / "final", weights_only=False)
    train_loss = trainer.callback_metrics.get("train_loss")  # validate() resets the metrics
    metrics = trainer.validate(module, datamodule, verbose=False)[0]
    report = {"val_loss": metrics["val_loss"],
              "train_loss": float(train_loss) if train_loss is not None else math.nan}  # fmt: skip
    if "val_bpb" in metrics:
        report["val_bpb"] = metrics["val_bpb"]
    best = next((c for c in trainer.checkpoint_callbacks if c.monitor == "val_loss"), None)
    if best is not None and not best.best_model_path:
        log.warning("train.keep_best: no validation ran during training (val_every_n_steps > "
                    "steps), so there is no %s/%s", out_dir, BEST)  # fmt: skip
    elif best is not None:
        report.update(best_val_loss=float(best.best_model_score),
                      best_step=ckpt.read_meta(out_dir / BEST).get("step"),
                      best_checkpoint=str(out_dir / BEST))  # fmt: skip
    return {
        **report,
        "train_tokens": module.train_tokens,
        "tokens_per_second": module.tokens_this_fit / fit_seconds,
        "steps": trainer.global_step,
        "train_seconds": fit_seconds,
        "params": module.model.num_params(),
        "precision": trainer.precision,
        "checkpoint": str(out_dir / "final"),
    }


def write_report(path: str | None, report: dict[str, Any], trainer: pl.Trainer) -> None:
    """Write the JSON report (from the first process only under distributed training)."""
    if path and trainer.is_global_zero:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, indent=2) + "\n")


def jsonable(cfg: Any) -> dict[str, Any]:
    """A config dataclass as plain JSON values (stored in checkpoints)."""
    return json.loads(json.dumps(asdict(cfg), default=str))
