"""Training on several processes: each rank reads its own windows (disjoint, together the
one-process epoch), a two-process DDP run counts both ranks' tokens, and one killed with
SIGKILL and resumed ends with the weights of an uninterrupted two-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import TINY_MODEL, flags

from seqgen.checkpoint import read_weights
from seqgen.data import EpochSampler, RandomWindows
from seqgen.training.datamodules import WindowDataModule


def test_an_epoch_draws_one_window_from_each_slot_of_the_stream():
    sampler = EpochSampler(size=10_000, num_samples=40, seed=3)
    offsets = [offset for offset, _ in sampler]
    assert sorted(o // 250 for o in offsets) == list(range(40))  # one per slot of 250
    assert offsets != sorted(offsets)  # in a random order
    assert [o for o, _ in sampler] != offsets  # the next epoch draws anew
    assert [o for o, _ in EpochSampler(10_000, 40, seed=3)] == offsets  # a function of the seed


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_draw_disjoint_shares_of_the_one_process_epoch(world_size):
    whole = list(EpochSampler(5_000, 60, seed=1))
    shares = [
        list(EpochSampler(5_000, 60, seed=1, rank=r, world_size=world_size))
        for r in range(world_size)
    ]
    assert all(len(share) == 60 // world_size for share in shares)
    drawn = [key for share in shares for key in share]
    assert len(set(drawn)) == len(drawn)  # disjoint
    assert sorted(drawn) == sorted(whole)  # together, the one-process epoch
    resumed = EpochSampler(5_000, 60, seed=1, rank=1, world_size=world_size)
    resumed.skip = 7
    assert list(resumed) == shares[1][7:]  # a resumed rank goes on with its own share


def test_the_window_loaders_of_two_ranks_read_the_one_process_epoch():
    ids = np.arange(4096 + 16, dtype=np.int64)  # 256 draws an epoch: 128 a rank
    windows = RandomWindows(ids, block_size=16)

    def epoch(rank: int, world_size: int) -> list[int]:
        module = WindowDataModule(windows, windows, batch_size=4, seed=5)
        module.trainer = SimpleNamespace(
            global_rank=rank, world_size=world_size, current_epoch=0, fit_loop=None
        )
        module.trainer.fit_loop = SimpleNamespace(
            epoch_loop=SimpleNamespace(
                batch_progress=SimpleNamespace(current=SimpleNamespace(ready=0))
            )
        )
        return [
            int(first) for batch in module.train_dataloader() for first in batch["input_ids"][:, 0]
        ]

    one, first, second = epoch(0, 1), epoch(0, 2), epoch(1, 2)
    assert len(first) == len(second) == len(one) // 2
    assert not set(first) & set(second) and sorted(first + second) == sorted(one)


CHILD = """
import os, signal, sys
from seqgen.training.module import LMModule

kill_at = int(sys.argv[1])
after_step = LMModule.on_train_batch_end

def dying(self, *args):
    after_step(self, *args)
    if self.trainer.global_step == kill_at:  # every rank dies at this step
        os.kill(os.getpid(), signal.SIGKILL)

LMModule.on_train_batch_end = dying
from seqgen.cli import main

sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_a_killed_ddp_run_resumes_to_the_weights_of_an_uninterrupted_one(corpus_file, tmp_path):
    """Lightning starts the second rank by running the script again, so the child is a file."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    settings = flags(
        {
            **TINY_MODEL,
            "model.dropout": 0.1,
            "train.batch_size": 4,
            "train.max_steps": 16,
            "train.warmup_steps": 2,
            "train.checkpoint_every_n_steps": 5,
            "train.val_every_n_steps": 8,
            "train.progress_bar": "false",
            "train.accelerator": "cpu",
            "train.devices": 2,
            "train.strategy": "ddp",
            "train.num_threads": 1,
        }
    )
    argv = ["pretrain", "--data.source", str(corpus_file), *settings]
    env = {**os.environ, "OMP_DYNAMIC": "false", "MKL_DYNAMIC": "false"}

    def train(out, kill_at=-1, *extra):
        return subprocess.run(
            [sys.executable, str(script), str(kill_at), *argv, "--out_dir", str(out), *extra],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
            start_new_session=True,
        )

    report = tmp_path / "whole.json"
    whole = train(tmp_path / "whole", -1, "--report", str(report))
    assert whole.returncode == 0, whole.stderr[-3000:]
    values = json.loads(report.read_text())  # the strategy passes straight through to Lightning
    assert values["steps"] == 16 and values["train_tokens"] == 2 * 16 * 4 * 32  # both ranks
    killed = train(tmp_path / "killed", 12)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert not (tmp_path / "killed" / "final").exists()
    resumed = train(tmp_path / "killed", -1, "--resume", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected = read_weights(tmp_path / "whole" / "final")
    found = read_weights(tmp_path / "killed" / "final")
    worst = max((expected[k] - found[k]).abs().max().item() for k in expected)
    assert worst <= 1e-5, f"weights differ by up to {worst}"
