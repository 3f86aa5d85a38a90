"""What every `seqgen evaluate --task T` shares: a checkpoint to generate with or a system's
outputs to score, decoding options, and the JSON report."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def evaluation_parser(task: str, description: str, outputs: str, outputs_help: str
                      ) -> argparse.ArgumentParser:  # fmt: skip
    """A parser with --ckpt or `outputs` (one of them required), --beams, --length-penalty,
    --precision, --limit and --report; the task adds its data and metric options."""
    parser = argparse.ArgumentParser(prog=f"seqgen evaluate --task {task}",
                                     description=description)  # fmt: skip
    parser.add_argument("--task", default=task, help=argparse.SUPPRESS)
    system = parser.add_mutually_exclusive_group(required=True)
    system.add_argument("--ckpt", help="Checkpoint or run directory to generate with.")
    system.add_argument(outputs, help=outputs_help)
    parser.add_argument("--beams", type=int, default=4, help="Beam size (1 = greedy, batched).")
    parser.add_argument("--length-penalty", type=float, default=1.0,
                        help="Beams rank by log-probability / length ** this.")  # fmt: skip
    parser.add_argument("--precision", choices=["32", "bf16"], default="32")
    parser.add_argument("--limit", type=int, default=None, help="Only the first N examples.")
    parser.add_argument("--report", help="Write the scores as JSON here.")
    return parser


def add_sampling_options(parser: argparse.ArgumentParser, utility: str,
                         seed_help: str = "Sampling seed.") -> None:  # fmt: skip
    """--temperature, --top-p, --mbr-samples and --seed; `utility` names the similarity that
    minimum Bayes risk decoding picks the consensus by (the task's `mbr_similarity`)."""
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="> 0 samples (with --beams 1).")  # fmt: skip
    parser.add_argument("--top-p", type=float, default=None, metavar="P",
                        help="Sample from the smallest set of most likely tokens whose "
                             "probability reaches P.")  # fmt: skip
    parser.add_argument("--mbr-samples", type=int, default=1, metavar="N",
                        help="Minimum Bayes risk decoding: sample N outputs per input (with "
                             "--temperature > 0, --beams 1) and keep the one with the highest "
                             f"{utility} against the other samples; costs N sampled "
                             "generations per input.")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help=seed_help)


def check_sampling(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit with a usage error for sampling options that cannot work together."""
    for flag in ("mbr_samples", "batch_size"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.mbr_samples > 1 and (not args.ckpt or args.temperature <= 0 or args.beams != 1):
        parser.error("--mbr-samples N > 1 samples from --ckpt: give --temperature > 0 and "
                     "--beams 1")  # fmt: skip


def write_json(path: str | Path | None, data: Any) -> None:
    """Write indented JSON to `path` (its folder created), if a path is given."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


class Progress:
    """An `on_done(n)` callback for `Generator.generate_many`: a running count with the rate
    on a terminal, the final count only in a log."""

    def __init__(self, verb: str, total: int) -> None:
        self.verb, self.total, self.done = verb, total, 0
        self.started = time.perf_counter()

    def __call__(self, n: int) -> None:
        self.done += n
        if sys.stderr.isatty() or self.done == self.total:
            rate = self.done / max(time.perf_counter() - self.started, 1e-9)
            print(f"\r{self.verb} {self.done}/{self.total} ({rate:.1f}/s)", end="",
                  file=sys.stderr)  # fmt: skip
            if self.done == self.total:
                print(file=sys.stderr)


def stream_nll(model, ids: np.ndarray, pad_id: int, batch_size: int = 8
               ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Every token of a stream after the first scored once, in non-overlapping windows of the
    model's context (as training validates): (targets, their NLL in nats), both (N,)."""
    from seqgen.data import IGNORE_INDEX, SequentialWindows
    from seqgen.module import masked_nll

    windows = SequentialWindows(ids, model.config.block_size, pad_id)
    targets, nll = [], []
    with torch.inference_mode():
        for start in range(0, len(windows), batch_size):
            batch = [windows[i] for i in range(start, min(start + batch_size, len(windows)))]
            inputs = torch.stack([b["input_ids"] for b in batch])
            wanted = torch.stack([b["targets"] for b in batch])
            scored = wanted != IGNORE_INDEX
            targets.append(wanted[scored])
            nll.append(masked_nll(model(inputs), wanted)[scored].double())
    return torch.cat(targets), torch.cat(nll)
