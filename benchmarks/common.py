"""What every benchmark shares: the machine it ran on (in every report), its arguments, its
report, and typed calls into seqgen: training through the CLI's own parser (`parse_run`)
and evaluation through the task's typed config, so a renamed option fails at once (and in
the benchmarks' smoke tests), not after a long run.

Run a benchmark from the repository root as `python -m benchmarks.NAME ...`.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from seqgen.evaluation import write_json

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "configs"
VECTOR_PREFIXES = ("sse4", "avx", "amx", "fma", "f16c")


def machine() -> dict[str, Any]:
    """The CPU model and its vector extensions, cores and torch: figures from two machines
    never compare, so every report says which one it came from."""
    import torch

    from seqgen.cpu import native_bf16

    model, flags, ids = platform.processor() or platform.machine(), [], {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "model name":
                model = value
            elif key in ("cpu family", "model", "stepping"):
                ids[key] = value  # a generic model name ("Intel Xeon Processor") hides these
            elif key == "flags":
                flags = value.split()
                break
    except OSError:  # not Linux: the model name from platform only
        pass
    return {
        "cpu": model,
        "cpu_id": ", ".join(f"{key} {value}" for key, value in ids.items()),
        "vector_extensions": sorted(f for f in flags if f.startswith(VECTOR_PREFIXES)),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "native_bf16": native_bf16(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def write_report(path: str | Path | None, report: dict[str, Any]) -> dict[str, Any]:
    """The report with the machine added (`cpu`: its model and vector extensions in one
    line; `machine`: the details), written as JSON to `path` (if given)."""
    facts = machine()
    cpu = f"{facts['cpu']} ({facts['cpu_id']}): {' '.join(facts['vector_extensions'])}"
    report = {**report, "cpu": cpu, "machine": facts}
    write_json(path, report)
    return report


def print_figures(report: dict[str, Any]) -> None:
    """A report's numbers as a two-column Markdown table, then the machine they came from."""
    from seqgen.tables import markdown_table

    rows = [
        [key, f"{value:,.3f}" if isinstance(value, float) else f"{value:,}"]
        for key, value in report.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    ]
    print(markdown_table(["figure", "value"], rows))
    print(f"\n{report['cpu']}")


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse as seqgen's commands do: flags with underscores (a dashed spelling is an error
    that gives the flag's)."""
    import sys

    from seqgen.arguments import normalize

    argv = list(sys.argv[1:] if argv is None else argv)
    known = {action.dest: None for action in parser._actions}
    return parser.parse_args(normalize(argv, known))


def train(command: str, argv: Sequence[str]) -> dict[str, Any]:
    """`seqgen pretrain|finetune` with these arguments, parsed into the typed RunConfig by
    the CLI's own parser; the training report."""
    from seqgen.cli import parse_run
    from seqgen.training.workflow import run

    config, _ = parse_run(command, argv)
    return run(config)


def evaluate(task: str, **values: Any) -> dict[str, Any]:
    """`seqgen evaluate --task TASK` with the task's typed config (its generation defaults
    under `values`); the evaluation report."""
    from seqgen.evaluation import eval_options
    from seqgen.registry import task_class

    return task_class(task).evaluate(eval_options(task, **values))


# the benchmarks' names of the training precisions, and Lightning's
PRECISIONS = {"fp32": "32-true", "bf16": "bf16-mixed"}


def seqgen_training_step(model_config, batch_size: int) -> Callable[[], None]:
    """One training step of seqgen's GPT as `seqgen pretrain` takes it (forward, the masked
    loss, backward, the gradient-norm guard and clipping, fused AdamW) on a fixed random
    batch of `batch_size` x block_size."""
    import torch

    from seqgen.config import TrainConfig
    from seqgen.training.module import LMModule, sequence_loss

    module = LMModule(model_config, TrainConfig(learning_rate=1e-4))
    optimizer = module.configure_optimizers()["optimizer"]
    shape = (batch_size, model_config.block_size)
    x, y = (torch.randint(model_config.vocab_size, shape) for _ in range(2))

    def step() -> None:
        loss, _ = sequence_loss(module.model(x), {"targets": y})
        loss.backward()
        module.on_before_optimizer_step(optimizer)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def seconds_in_turns(
    contenders: dict[str, Callable[[], None]],
    precision: str = "fp32",
    steps: int = 15,
    warmup: int = 3,
) -> dict[str, float]:
    """Median seconds per call of each contender in `precision` (fp32, or bf16 autocast),
    taken in turns (`seqgen.timing.seconds_in_turns`)."""
    from seqgen.cpu import autocast
    from seqgen.timing import seconds_in_turns as timed

    def within(call: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            with autocast(PRECISIONS[precision]):
                call()

        return run

    times = timed({name: within(call) for name, call in contenders.items()}, steps, warmup)
    return {name: statistics.median(seconds) for name, seconds in times.items()}
