"""nanoGPT beside seqgen, in the same benchmark run: its own CPU recipe trained for a given
wall time on the same text, and its model's raw training step against seqgen's at equal shape.

nanoGPT's files come unmodified from ../shared/anchors/nanoGPT (MIT; see its README there);
they are copied into a scratch directory and run from there, never imported by seqgen itself.
Its training script has no wall-clock budget, so a short calibration run times its iterations
and the real run gets the iteration count (and learning-rate schedule) that fills the budget.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import re
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from benchmarks.common import ROOT, seconds_in_turns, seqgen_training_step

ANCHOR = ROOT.parent / "shared" / "anchors" / "nanoGPT"
# nanoGPT's README recipe for a CPU (Tiny Shakespeare, characters), all but the length
BATCH_SIZE, BLOCK_SIZE = 12, 64
CPU_RECIPE = [
    "config/train_shakespeare_char.py",
    "--device=cpu",
    "--compile=False",
    "--log_interval=1",
    f"--block_size={BLOCK_SIZE}",
    f"--batch_size={BATCH_SIZE}",
    "--n_layer=4",
    "--n_head=4",
    "--n_embd=128",
    "--dropout=0.0",
]
CALIBRATION_ITERS = 60
ITER_LINE = re.compile(r"^iter (\d+): loss [-\d.naif]+, time ([\d.]+)ms", re.MULTILINE)
EVAL_LINE = re.compile(r"^step (\d+): train loss ([\d.]+), val loss ([\d.]+)", re.MULTILINE)


def prepare(anchor: Path, text: Path, workdir: Path) -> Path:
    """A runnable copy of nanoGPT in workdir with `text` as its Shakespeare data (its
    prepare.py splits it: first 90% of the characters train, the rest validation)."""
    if not (anchor / "train.py").is_file():
        raise FileNotFoundError(f"{anchor}: no nanoGPT train.py")
    copy = workdir / "nanoGPT"
    shutil.copytree(anchor, copy)
    data = copy / "data" / "shakespeare_char"
    shutil.copyfile(text, data / "input.txt")
    done = subprocess.run([sys.executable, "prepare.py"], cwd=data, capture_output=True, text=True)
    if done.returncode:
        hint = " (pip install -e .[bench])" if "requests" in done.stderr else ""
        raise RuntimeError(f"nanoGPT's prepare.py failed{hint}:\n{done.stderr[-2000:]}")
    return copy


def _train(copy: Path, iters: int, eval_iters: int) -> str:
    args = [
        *CPU_RECIPE,
        f"--max_iters={iters}",
        f"--lr_decay_iters={iters}",
        f"--eval_interval={iters}",
        f"--eval_iters={eval_iters}",
        f"--out_dir={copy / 'out'}",
    ]
    done = subprocess.run(
        [sys.executable, "train.py", *args], cwd=copy, capture_output=True, text=True
    )
    if done.returncode:
        raise RuntimeError(f"nanoGPT train.py failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return done.stdout


def train_for(copy: Path, seconds: float, eval_iters: int = 200) -> dict[str, Any]:
    """Train nanoGPT's CPU recipe for about `seconds` of training steps; its validation loss
    (its own estimate over `eval_iters` random batches) in bits per byte (its text is
    ASCII, so a character is a byte) and its training tokens/s."""
    calibration = _train(copy, CALIBRATION_ITERS, eval_iters=1)
    step_ms = statistics.median(
        float(ms) for it, ms in ITER_LINE.findall(calibration) if 10 <= int(it) < CALIBRATION_ITERS
    )
    iters = max(2, round(seconds * 1000 / step_ms))
    log = _train(copy, iters, eval_iters)
    # iteration 0 and the last also ran an evaluation: the others are training alone
    times = [float(ms) / 1000 for it, ms in ITER_LINE.findall(log) if 0 < int(it) < iters]
    evals = {int(step): float(val) for step, _, val in EVAL_LINE.findall(log)}
    if iters not in evals:
        raise RuntimeError(f"nanoGPT printed no evaluation at step {iters}:\n{log[-2000:]}")
    train_seconds = sum(times) * (iters + 1) / max(len(times), 1)  # iters + 1 steps ran
    tokens = (iters + 1) * BATCH_SIZE * BLOCK_SIZE
    return {
        "val_loss": evals[iters],
        "val_bpb": evals[iters] / math.log(2),
        "iters": iters,
        "train_seconds": train_seconds,
        "tokens_per_second": tokens / train_seconds,
        "calibrated_step_ms": step_ms,
        "eval_iters": eval_iters,
    }


# ------------------------------------------------------------------ raw training steps


@dataclass(frozen=True)
class Shape:
    n_layer: int
    n_head: int
    n_embd: int
    vocab_size: int
    batch_size: int
    block_size: int
    bias: bool = True
    activation: str = "gelu"  # nanoGPT's GELU is the exact one

    @classmethod
    def of(cls, model: dict[str, Any], batch_size: int) -> Shape:
        """The shape of a seqgen model config (as a dict) at this batch size."""
        names = ("n_layer", "n_head", "n_embd", "vocab_size", "block_size", "bias", "activation")
        return cls(batch_size=batch_size, **{name: model[name] for name in names})

    @property
    def tokens(self) -> int:
        return self.batch_size * self.block_size


SHAPE_10M = Shape(6, 6, 384, 2048, 16, 256)  # 10.9M parameters


def load_model_module(copy: Path) -> ModuleType:
    """nanoGPT's model.py, loaded from its copy under a name of its own."""
    spec = importlib.util.spec_from_file_location("nanogpt_model", copy / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _nanogpt_step(nanogpt: ModuleType, shape: Shape):
    """A training step of nanoGPT's model as its train.py takes it on a CPU, on a fixed random
    batch."""
    config = nanogpt.GPTConfig(
        n_layer=shape.n_layer,
        n_head=shape.n_head,
        n_embd=shape.n_embd,
        vocab_size=shape.vocab_size,
        block_size=shape.block_size,
        dropout=0.0,
        bias=shape.bias,
    )
    with contextlib.redirect_stdout(None):  # it prints its parameter count
        model = nanogpt.GPT(config)
        optimizer = model.configure_optimizers(0.1, 1e-4, (0.9, 0.95), "cpu")

    x, y = (torch.randint(shape.vocab_size, (shape.batch_size, shape.block_size)) for _ in range(2))

    def step() -> None:
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def raw_steps(
    nanogpt: ModuleType, shape: Shape, precision: str, steps: int = 15, warmup: int = 3
) -> dict[str, float]:
    """Seconds per training step (forward, backward, clipping, AdamW) of seqgen's GPT and
    nanoGPT's at one shape, fp32 or under bf16 autocast, taken in turns."""
    from seqgen.config import ModelConfig

    torch.manual_seed(0)
    config = ModelConfig(
        n_layer=shape.n_layer,
        n_head=shape.n_head,
        n_embd=shape.n_embd,
        vocab_size=shape.vocab_size,
        block_size=shape.block_size,
        bias=shape.bias,
        activation=shape.activation,
    )
    contenders = {
        "seqgen": seqgen_training_step(config, shape.batch_size),
        "nanogpt": _nanogpt_step(nanogpt, shape),
    }
    seconds = seconds_in_turns(contenders, precision, steps, warmup)
    return {
        "seqgen_seconds": seconds["seqgen"],
        "nanogpt_seconds": seconds["nanogpt"],
        "ratio": seconds["nanogpt"] / seconds["seqgen"],  # > 1: seqgen's step is faster
        "seqgen_tokens_per_second": shape.tokens / seconds["seqgen"],
    }
