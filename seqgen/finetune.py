"""Fine-tune a checkpoint on a task's examples (or train one from scratch): the task turns
raw examples into sequences with a loss mask; training is the shared LMModule."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from seqgen import checkpoint as ckpt
from seqgen.config import ModelConfig, TrainConfig
from seqgen.errors import CheckpointError, ConfigError
from seqgen.examples import Example, ExampleDataModule
from seqgen.model import GPT
from seqgen.module import LMModule
from seqgen.pretrain import build_trainer, fit_and_validate, jsonable, resume_point, write_report
from seqgen.tasks import Task, get_task
from seqgen.tokenizer import TokenizerConfig, load_tokenizer

log = logging.getLogger("seqgen")
FROM_SCRATCH = "none"


@dataclass
class FinetuneConfig:
    """Fine-tune a checkpoint on a task (translation, summarization, ...), or train from scratch.
    The task's data options are the `data.*` keys (see `seqgen finetune --task T --help`)."""

    task: str | None = None
    """The task to train (its name, e.g. translation); see `seqgen finetune --help`."""
    init_from: str | None = None
    """Checkpoint or run directory to start from (`--from`), or `none` to train from scratch."""
    model: ModelConfig = field(default_factory=lambda: ModelConfig.from_preset("small"))
    """The model, when training from scratch (a checkpoint brings its own)."""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    """The tokenizer trained on the task's text, when training from scratch."""
    train: TrainConfig = field(default_factory=TrainConfig)
    lm_weight: float | None = None
    """Auxiliary LM loss weight over the whole sequence (None: the task's default; 0: off)."""
    dropout: float | None = None
    """Dropout while fine-tuning (None: the checkpoint's, or model.dropout from scratch)."""
    out_dir: str = "runs/finetune"
    """Run directory: checkpoints/, final/ (the finished model) and logs/."""
    seed: int = 1337
    """Seed for initialisation and data order."""
    resume: str | None = None
    """Resume training: `last` (the newest checkpoint in out_dir) or a checkpoint directory."""


def encode_all(task: Task, raw: list[dict], tokenizer, max_len: int, split: str) -> list[Example]:
    examples = [task.encode(example, tokenizer, max_len) for example in raw]
    truncated = sum(1 for e in examples if e.truncated)
    if truncated:
        log.info("%s: %d of %d examples truncated to %d tokens", split, truncated,
                 len(examples), max_len)  # fmt: skip
    return examples


def run(cfg: FinetuneConfig, data: Any, report_path: str | None = None) -> dict[str, Any]:
    """Train, save `out_dir/final`, validate; returns (and optionally writes) the report."""
    started = time.perf_counter()
    if cfg.task is None:
        raise ConfigError("set the task: --task NAME (or `task:` in the config)")
    task = get_task(cfg.task)
    if task.data_config is None:
        raise ConfigError(f"task {task.name!r} has no fine-tuning data; train it with pretrain")
    if cfg.init_from is None and cfg.resume is None:
        raise ConfigError(f"set --from CKPT (a checkpoint or run directory), or --from "
                          f"{FROM_SCRATCH} to train from scratch")  # fmt: skip
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    out_dir = Path(cfg.out_dir)
    train_raw, val_raw = task.load(data, "train"), task.load(data, "val")
    resume_from = resume_point(cfg.resume, out_dir)
    if resume_from is not None:
        meta = ckpt.read_meta(resume_from)
        if meta["task"] != task.name:
            raise CheckpointError(f"{resume_from} was trained for task {meta['task']!r}, "
                                  f"not {task.name!r}")  # fmt: skip
        tokenizer = load_tokenizer(resume_from)
        model = GPT(ModelConfig.from_dict(meta["model"]))
        started_from = meta.get("init_from", str(resume_from))
    elif cfg.init_from and cfg.init_from != FROM_SCRATCH:
        loaded = ckpt.load(cfg.init_from)
        model, tokenizer, started_from = loaded.model.train(), loaded.tokenizer, str(loaded.path)
        log.info("fine-tuning %s (task %s, step %s)", loaded.path, loaded.task,
                 loaded.meta.get("step"))  # fmt: skip
    else:
        tokenizer = task.build_tokenizer(train_raw, cfg.tokenizer)
        model = GPT(ModelConfig(**{**asdict(cfg.model), "vocab_size": tokenizer.vocab_size}))
        started_from = FROM_SCRATCH
    vocab_before = tokenizer.vocab_size
    tokenizer.add_special_tokens(task.special_tokens(data))
    model.resize_vocab(tokenizer.vocab_size)
    if tokenizer.vocab_size > vocab_before:
        log.info("added %d special tokens (ids %d-%d)", tokenizer.vocab_size - vocab_before,
                 vocab_before, tokenizer.vocab_size - 1)  # fmt: skip
    if cfg.dropout is not None:
        model.set_dropout(cfg.dropout)
    # encode as inference will prompt: with the settings stored in the checkpoint
    task.configure(task.options(data), model.config.block_size)
    data_module, sizes = training_data(task, train_raw, val_raw, tokenizer, model.config.block_size,
                                       cfg)  # fmt: skip
    lm_weight = task.lm_weight if cfg.lm_weight is None else cfg.lm_weight
    module = LMModule(
        model.config,
        cfg.train,
        task=task.name,
        lm_weight=lm_weight,
        meta={
            "task_options": task.options(data),
            "init_from": started_from,
            "finetune_config": {**jsonable(cfg), "data": jsonable(data)},
        },
        model=model,
    )
    rank_aware = isinstance(data_module, ExampleDataModule)  # it shards batches itself
    trainer = build_trainer(cfg.train, out_dir, tokenizer, use_distributed_sampler=not rank_aware)
    report = fit_and_validate(trainer, module, data_module, out_dir, resume_from)
    draws = (trainer.global_step * cfg.train.batch_size
             * cfg.train.accumulate_grad_batches * trainer.world_size)  # fmt: skip
    report.update(
        epochs=draws / sizes.pop("epoch_size"),
        wall_seconds=time.perf_counter() - started,
        vocab_size=tokenizer.vocab_size,
        **sizes,
        init_from=started_from,
        data_stats=dict(task.stats),
    )
    write_report(report_path, report, trainer)
    return report


def training_data(
    task: Task, train_raw: list, val_raw: list, tokenizer, block_size: int, cfg: FinetuneConfig
) -> tuple[pl.LightningDataModule, dict[str, int]]:
    """The task's own windows (its `datamodule` hook), or its encoded examples; with the
    sizes for the report (`epoch_size`: training draws per epoch)."""
    if hasattr(task, "datamodule"):
        module = task.datamodule(train_raw, val_raw, tokenizer, block_size, cfg.train.batch_size)
        return module, {"epoch_size": module.draws_per_epoch, "train_examples": len(train_raw),
                        "val_examples": len(val_raw)}  # fmt: skip
    max_len = block_size + 1  # inputs and targets are the sequence shifted by one
    train = encode_all(task, train_raw, tokenizer, max_len, "train")
    val = encode_all(task, val_raw, tokenizer, max_len, "val")
    module = ExampleDataModule(train, val, cfg.train.batch_size, tokenizer.pad_id, cfg.seed,
                               rank_aware=True)  # fmt: skip
    return module, {
        "epoch_size": len(train),
        "train_examples": len(train),
        "val_examples": len(val),
        "train_truncated": sum(1 for e in train if e.truncated),
        "val_truncated": sum(1 for e in val if e.truncated),
        "train_truncated_tokens": sum(e.truncated for e in train),
    }
