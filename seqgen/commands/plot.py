"""`seqgen plot`: the training and validation curves of one or several runs, overlaid.

Curves come from the runs' CSV logs (every `logs/version_N/metrics.csv`, so a resumed run
is one curve): training loss as a line, validation loss (and bits per byte, where the task
has them) as points joined by a line, one colour per run.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from seqgen.errors import DataError
from seqgen.files import check_writable


@dataclass(kw_only=True)
class PlotConfig:
    """Loss curves of training runs, overlaid for comparison (from their CSV logs)."""

    run: list[str]
    """Run directories (their out_dir); repeat the flag to compare several."""
    out: str
    """Image to write (.png, .svg or .pdf)."""
    smooth: int = 1
    """Average the training loss over this many logged points (1: raw)."""

    def __post_init__(self) -> None:
        if not self.run:
            raise ValueError("give at least one run")
        if self.smooth < 1:
            raise ValueError(f"smooth must be >= 1, got {self.smooth}")
        check_writable(self.out, "out")


def read_curves(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every logged metric of a run as sorted (step, value) points; later logs (a resume)
    replace earlier ones at the same step."""
    files = sorted(
        (run / "logs").glob("version_*/metrics.csv"), key=lambda f: int(f.parent.name.split("_")[1])
    )
    if not files:
        raise DataError(f"{run}: no logs/version_*/metrics.csv (train.logger without csv?)")
    curves: dict[str, dict[int, float]] = {}
    for file in files:
        with file.open(newline="") as rows:
            for row in csv.DictReader(rows):
                step = int(float(row["step"]))
                for key, value in row.items():
                    if key not in ("step", "epoch") and value not in ("", None):
                        curves.setdefault(key, {})[step] = float(value)
    return {key: sorted(points.items()) for key, points in curves.items()}


def plot(config: PlotConfig) -> list[str]:
    """Write the figure; returns the metrics drawn."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    runs = {Path(run): read_curves(Path(run)) for run in config.run}
    panels = [
        m
        for m in ("train_loss", "val_loss", "val_bpb")
        if any(m in curves for curves in runs.values())
    ]
    if not panels:
        raise DataError(f"{', '.join(config.run)}: no train_loss, val_loss or val_bpb logged")
    loss_panel = [m for m in panels if m != "val_bpb"]
    wide = "val_bpb" in panels
    figure, axes = plt.subplots(
        1, 2 if wide else 1, squeeze=False, figsize=(11 if wide else 6.5, 4.2), dpi=120
    )
    for index, (run, curves) in enumerate(runs.items()):
        colour = f"C{index}"
        if "train_loss" in curves:
            steps, values = zip(*curves["train_loss"], strict=True)
            windows = [values[max(0, i - config.smooth + 1) : i + 1] for i in range(len(values))]
            smoothed = [sum(window) / len(window) for window in windows]
            axes[0][0].plot(
                steps, smoothed, color=colour, alpha=0.6, lw=1, label=f"{run.name} train"
            )
        for metric, ax in (("val_loss", axes[0][0]), ("val_bpb", axes[0][-1])):
            if metric in curves and (metric != "val_bpb" or wide):
                steps, values = zip(*curves[metric], strict=True)
                ax.plot(
                    steps, values, color=colour, marker="o", ms=3, lw=1.5, label=f"{run.name} val"
                )
    axes[0][0].set(xlabel="step", ylabel="loss (nats per token)", title="loss")
    if wide:
        axes[0][1].set(xlabel="step", ylabel="bits per byte", title="validation bits per byte")
    for ax in axes[0]:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figure.tight_layout()
    Path(config.out).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(config.out)
    plt.close(figure)
    return loss_panel + (["val_bpb"] if wide else [])
