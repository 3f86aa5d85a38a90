"""Per-example training data (sentence pairs, article/summary pairs): a token sequence with a
loss mask, batched by similar length and padded on the right.

Right padding needs no attention mask: causal attention never lets a real token see the
padding after it, and padded positions carry no loss.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, Sampler

from seqgen.data import IGNORE_INDEX


@dataclass
class Example:
    """A training sequence: `ids` (bos ... eos) and `loss_mask`, 1 where ids[i] is predicted
    (scored as a target of position i - 1)."""

    ids: list[int]
    loss_mask: list[int]
    truncated: int = 0
    """Tokens cut to fit the context (reported by fine-tuning)."""

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.loss_mask):
            raise ValueError(f"ids ({len(self.ids)}) and loss_mask ({len(self.loss_mask)}) differ")
        if len(self.ids) < 2:
            raise ValueError("an example needs at least two ids (one input, one target)")


def pad_batch(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """{input_ids, targets, loss_mask}, each (B, T) with T the longest example minus one."""
    width = max(len(e.ids) for e in examples) - 1
    inputs = torch.full((len(examples), width), pad_id, dtype=torch.long)
    targets = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.ids) - 1
        ids = torch.tensor(example.ids, dtype=torch.long)
        inputs[row, :n] = ids[:-1]
        targets[row, :n] = ids[1:]
        mask[row, :n] = torch.tensor(example.loss_mask[1:], dtype=torch.long)
    return {"input_ids": inputs, "targets": targets, "loss_mask": mask}


class ExampleDataset(Dataset):
    def __init__(self, examples: Sequence[Example]) -> None:
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> Example:
        return self.examples[i]


class LengthGroupedBatches(Sampler[list[int]]):
    """Shuffled batches of examples of similar length (less padding, so faster on CPU).

    Each epoch shuffles the examples, sorts runs of `group_batches` batches by length, cuts
    them into batches and shuffles the batches, so the order stays random while a batch holds
    similar lengths. `seed + epoch` makes it reproducible.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        seed: int = 0,
        group_batches: int = 50,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.lengths, self.batch_size = list(lengths), batch_size
        self.seed, self.group_batches, self.epoch = seed, group_batches, 0
        self.rank, self.world_size = rank, world_size
        self.skip = 0  # batches of the epoch already trained on (a resumed run)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size) // self.world_size

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(self.seed + self.epoch)
        self.epoch += 1
        done, self.skip = self.skip, 0
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        group = self.batch_size * self.group_batches
        batches = []
        for start in range(0, len(order), group):
            chunk = sorted(order[start : start + group], key=self.lengths.__getitem__)
            size = self.batch_size
            batches += [chunk[i : i + size] for i in range(0, len(chunk), size)]
        rng.shuffle(batches)
        # every rank draws the same permutation (same seed) and takes its own share of it
        yield from batches[self.rank :: self.world_size][: len(self)][done:]
