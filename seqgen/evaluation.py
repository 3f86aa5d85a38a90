"""What every `seqgen evaluate --task T` shares: a checkpoint to generate with or a system's
outputs to score, decoding options, and the JSON report."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seqgen.devices import DeviceOptions
from seqgen.files import atomic_file, check_writable
from seqgen.generation.decoding import GenerationOptions
from seqgen.progress import Progress
from seqgen.state import TokenState


@dataclass(kw_only=True)
class EvalConfig(DeviceOptions):
    """What every `seqgen evaluate --task T` takes; a task's config adds its data and
    metric options."""

    ckpt: str | None = None
    """Checkpoint or run directory to score or generate with."""
    batch_size: int = 8
    """Sequences scored together, or prompts decoded at once (each with its beams under beam
    search); a prompt that finishes makes room for the next at once."""
    report: str | None = None
    """Write the scores as JSON here."""

    def __post_init__(self) -> None:
        DeviceOptions.__post_init__(self)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        check_writable(self.report, "report")


@dataclass(kw_only=True)
class DecodingEval(EvalConfig, GenerationOptions):
    """An evaluation that generates with a checkpoint (or scores a system's outputs): the
    generation options, a seed, minimum Bayes risk decoding and a limit."""

    seed: int = 0
    """Seed of sampling (and of bootstrap resampling, where the task uses it)."""
    mbr_samples: int = 1
    """Minimum Bayes risk decoding: sample N outputs per input (with temperature > 0 and
    num_beams 1) and keep the one most similar to the others by the task's similarity;
    costs N sampled generations per input."""
    limit: int | None = None
    """Only the first N examples."""
    bootstrap_samples: int = 1000
    """Resamples of the examples (sentences, documents, performances) for the 95% intervals
    that the task reports."""

    def __post_init__(self) -> None:
        EvalConfig.__post_init__(self)
        GenerationOptions.__post_init__(self)
        if self.mbr_samples < 1:
            raise ValueError(f"mbr_samples must be >= 1, got {self.mbr_samples}")
        if self.mbr_samples > 1 and not self.ckpt:
            raise ValueError("mbr_samples > 1 draws samples from ckpt: give --ckpt")
        self.check_mbr(self.mbr_samples)
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if self.bootstrap_samples < 1:
            raise ValueError(f"bootstrap_samples must be >= 1, got {self.bootstrap_samples}")


def eval_options(task: str, **values: Any) -> Any:
    """The eval config of `task` as `seqgen evaluate` builds it: the task's generation
    defaults (as the checkpoint `ckpt` configures the task, if given) under `values`."""
    from seqgen.registry import task_class
    from seqgen.tasks import Evaluates, known_options

    cls = task_class(task)
    if not issubclass(cls, Evaluates):
        raise ValueError(f"the {task} task has no evaluation")
    instance = cls()
    if values.get("ckpt"):
        from seqgen.inference import task_of

        instance = task_of(values["ckpt"])
    defaults = known_options(cls.eval_config, instance.decoding_defaults())
    return cls.eval_config(**{**defaults, **values})


def write_json(path: str | Path | None, data: Any) -> None:
    """Write indented JSON to `path` (its folder created, whole or not at all), if given."""
    if path:
        with atomic_file(path) as partial:
            partial.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def stream_nll(
    model, ids: np.ndarray, pad_id: int, batch_size: int = 8, state: TokenState | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every token of a stream after the first scored once, in non-overlapping windows of the
    model's context (as training validates): (targets, their NLL in nats), both (N,).
    `state`: the task's token state, for a model that reads one."""
    from seqgen.data import IGNORE_INDEX, SequentialWindows
    from seqgen.training.module import masked_nll

    windows = SequentialWindows(ids, model.config.block_size, pad_id, state)
    device = next(model.parameters()).device
    progress = Progress("scored", len(windows), "windows")
    targets, nll = [], []
    with torch.inference_mode():
        for start in range(0, len(windows), batch_size):
            batch = [windows[i] for i in range(start, min(start + batch_size, len(windows)))]
            inputs = torch.stack([b["input_ids"] for b in batch]).to(device)
            wanted = torch.stack([b["targets"] for b in batch]).to(device)
            states = (
                torch.stack([b["state"] for b in batch]).to(device) if state is not None else None
            )
            scored = wanted != IGNORE_INDEX
            targets.append(wanted[scored].cpu())
            nll.append(masked_nll(model(inputs, state=states), wanted)[scored].double().cpu())
            progress(len(batch))
    return torch.cat(targets), torch.cat(nll)
