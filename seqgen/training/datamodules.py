"""The LightningDataModules of the training workflow: windows of a token stream
(pretraining) and per-example batches (fine-tuning). Kept apart from the datasets, which
tasks and inference use, so that those never import Lightning (seconds at start-up)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from torch.utils.data import DataLoader, Dataset, Subset

from seqgen.data import EpochSampler
from seqgen.errors import DataError
from seqgen.training.examples import Example, ExampleDataset, LengthGroupedBatches, pad_batch


def resume_position(trainer: pl.Trainer | None, batches_per_epoch: int) -> tuple[int, int]:
    """(epoch, batches of it already trained on) where `fit` starts: (0, 0) for a new run,
    where the checkpoint stopped for a resumed one."""
    if trainer is None:
        return 0, 0
    done = trainer.fit_loop.epoch_loop.batch_progress.current.ready
    epoch = trainer.current_epoch
    return (epoch + 1, 0) if done >= batches_per_epoch else (epoch, done)


def rank_of(trainer: pl.Trainer | None) -> dict[str, int]:
    """This process's rank and the number of ranks, for a sampler that shards itself."""
    if trainer is None:
        return {"rank": 0, "world_size": 1}
    return {"rank": trainer.global_rank, "world_size": trainer.world_size}


def checked_during_fit(
    val_set: Dataset, trainer: pl.Trainer | None, batches: int | None, batch_size: int
) -> Dataset:
    """What the checks during training validate on: `batches` batches of the validation set,
    spread evenly across it (all of it when None or more), so each check costs a fraction of
    a full pass yet samples every part; the validation after training gets the whole set."""
    fitting = trainer is not None and trainer.state.fn == TrainerFn.FITTING
    items = len(val_set) if batches is None else batches * batch_size
    if not fitting or items >= len(val_set):
        return val_set
    return Subset(val_set, np.linspace(0, len(val_set) - 1, items).round().astype(int).tolist())


class WindowDataModule(pl.LightningDataModule):
    """Training windows drawn at random start offsets, and fixed validation windows.

    `train_set[i]` is the window starting at offset i (it has `block_size`, and one item per
    offset); an epoch draws as many windows as fit in the stream side by side, each
    distributed rank its own share (`EpochSampler`; the Trainer must then not add a
    distributed sampler: use_distributed_sampler=False). `val_batches` caps the validation
    batches of each check during training (see `checked_during_fit`).
    """

    def __init__(
        self,
        train_set: Dataset,
        val_set: Dataset,
        batch_size: int,
        num_workers: int = 0,
        seed: int = 0,
        val_batches: int | None = None,
    ) -> None:
        super().__init__()
        self.train_set, self.val_set = train_set, val_set
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.val_batches = val_batches

    @property
    def draws_per_epoch(self) -> int:
        """As many windows as fit in the stream side by side (drawn without replacement)."""
        return max(1, len(self.train_set) // self.train_set.block_size)

    def train_dataloader(self) -> DataLoader:
        sampler = EpochSampler(
            len(self.train_set), self.draws_per_epoch, self.seed, **rank_of(self.trainer)
        )
        batches = -(-len(sampler) // self.batch_size)
        sampler.epoch, done = resume_position(self.trainer, batches)
        sampler.skip = done * self.batch_size
        return DataLoader(
            self.train_set,
            self.batch_size,
            sampler=sampler,
            drop_last=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator(),  # worker seeds never draw from the global RNG
        )

    def val_dataloader(self) -> DataLoader:
        val_set = checked_during_fit(self.val_set, self.trainer, self.val_batches, self.batch_size)
        return DataLoader(
            val_set,
            self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            generator=torch.Generator(),
        )


class ExampleDataModule(pl.LightningDataModule):
    """Train and validation examples for fine-tuning; validation in a fixed order.

    Each distributed rank trains on its own share of the batches (the Trainer must then not
    add a distributed sampler: use_distributed_sampler=False).
    `val_batches` caps the validation batches of each check during training (see
    `checked_during_fit`).
    """

    def __init__(
        self,
        train: Sequence[Example],
        val: Sequence[Example],
        batch_size: int,
        pad_id: int,
        seed: int = 0,
        num_workers: int = 0,
        val_batches: int | None = None,
    ) -> None:
        super().__init__()
        if not train:
            raise DataError("no training examples")
        if not val:
            raise DataError("no validation examples")
        self.train_set, self.val_set = ExampleDataset(train), ExampleDataset(val)
        self.batch_size, self.pad_id, self.seed = batch_size, pad_id, seed
        self.num_workers = num_workers
        self.val_batches = val_batches

    def _collate(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        return pad_batch(examples, self.pad_id)

    def train_dataloader(self) -> DataLoader:
        lengths = [len(e.ids) for e in self.train_set.examples]
        batches = LengthGroupedBatches(lengths, self.batch_size, self.seed, **rank_of(self.trainer))
        batches.epoch, batches.skip = resume_position(self.trainer, len(batches))
        return DataLoader(
            self.train_set,
            batch_sampler=batches,
            collate_fn=self._collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator(),  # worker seeds never draw from the global RNG
        )

    def val_dataloader(self) -> DataLoader:
        # sorted by length: the same examples and loss, with far less padding
        ordered = ExampleDataset(sorted(self.val_set.examples, key=lambda e: len(e.ids)))
        val_set = checked_during_fit(ordered, self.trainer, self.val_batches, self.batch_size)
        return DataLoader(
            val_set,
            self.batch_size,
            shuffle=False,
            collate_fn=self._collate,
            num_workers=self.num_workers,
            generator=torch.Generator(),
        )
