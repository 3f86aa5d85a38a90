"""What every task's data shares: readers of local files and Hugging Face datasets, and the
windows of long token streams (text, music); seqgen.training.datamodules batches them for training.

Training samples windows of block_size + 1 tokens at random offsets; validation walks a stream
in non-overlapping windows, so every validation token is scored exactly once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from seqgen.errors import DataError
from seqgen.state import TokenState

IGNORE_INDEX = -100  # targets with this value carry no loss


# ---------------------------------------------------------------- reading


def read_text_file(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(
            f"{path}: not UTF-8 text (byte offset {err.start}, line {line}: "
            f"{data[err.start : err.start + 4]!r}); convert it, e.g. iconv -f latin1 -t utf-8"
        ) from None


def read_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    """("file:line", parsed row) for each non-empty line of a JSONL file."""
    # split on newlines only: JSON strings may hold U+2028, which splitlines() would cut at
    for number, line in enumerate(read_text_file(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{number}", json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{number}: invalid JSON ({err.msg})") from None


def hashed_share(key: str) -> float:
    """Where `key` falls in [0, 1), fixed by a hash of it: the same on every machine and run,
    so a held-out split chosen by it never moves when files are added or reordered."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def is_saved_dataset(path: Path) -> bool:
    """Whether `path` is a folder written by `datasets` save_to_disk."""
    return (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()


def missing_local_path(source: str, suffixes: Collection[str] = ()) -> bool:
    """Whether `source` names a local file or folder that does not exist. A hub dataset is
    `name` or `owner/name`; anything else is local: a path starting with `.`, `/` or `~`,
    ending in one of `suffixes`, with more than one `/`, or inside a folder that exists here
    (`data/missing` beside a `data/` folder). Such a source is an error to report at once,
    never a name to look up on the hub (without a network that retries for ~30 s)."""
    path = Path(source).expanduser()
    looks_local = (
        source.startswith((".", "/", "~"))
        or path.suffix.lower() in suffixes
        or source.strip("/").count("/") > 1
        or (len(path.parts) > 1 and path.parent.is_dir())
    )
    return looks_local and not path.exists()


def load_hf_dataset(source: str, hf_config: str | None, split: str, streaming: bool = False):
    """One split of a `save_to_disk` directory or a Hugging Face dataset (offline: from the
    local cache), with errors that say which and why; with `streaming`, a hub dataset is an
    iterable dataset that reads rows as they are asked for, not downloaded whole (a local
    folder is memory-mapped either way: `.to_iterable_dataset()` streams it)."""
    import datasets

    try:
        if Path(source).expanduser().is_dir():
            loaded = datasets.load_from_disk(str(Path(source).expanduser()))
            if isinstance(loaded, datasets.DatasetDict) and split not in loaded:
                raise DataError(f"{source}: no split {split!r} (has: {', '.join(loaded)})")
            return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
        return datasets.load_dataset(source, hf_config, split=split, streaming=streaming)
    except DataError:
        raise
    except KeyError:
        raise DataError(f"{source}: no split {split!r}") from None
    except Exception as err:  # datasets raises many types; all mean "could not load"
        first_line = str(err).splitlines()[0] if str(err) else ""
        raise DataError(
            f"{source}: not a local file, and loading it as a Hugging Face dataset failed "
            f"({type(err).__name__}: {first_line}). Offline, a hub dataset loads only from "
            "the local cache."
        ) from None


# ---------------------------------------------------------------- datasets


class EpochSampler(Sampler):
    """`num_samples` window offsets of a stream of `size` offsets per epoch, one from each of
    `num_samples` equal slots of the stream, in a random order and at a random place in the
    slot, each with a seed for the draw's own randomness (augmentation). Memory grows with the
    draws, not the stream (a permutation of every offset of a 10-billion-token corpus would
    take 80 GB). Both are functions of (seed, epoch) alone, so a run resumed mid-epoch
    continues exactly where it stopped once `skip` (the draws already trained on) is set.

    Under distributed training, rank r of `world_size` takes draws r, r + world_size, ... of
    the epoch, `num_samples // world_size` of them (every rank the same number, or their
    collectives would wait forever): disjoint, and together the one-process epoch (less its
    last `num_samples % world_size` draws). Yields (offset, seed) keys."""

    def __init__(
        self, size: int, num_samples: int, seed: int, rank: int = 0, world_size: int = 1
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not one of {world_size} ranks")
        self.size, self.num_samples, self.seed = size, num_samples, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return max(1, self.num_samples // self.world_size)

    def draws(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The epoch's offsets and seeds, in order, over all ranks (tensors: 16 bytes a draw,
        where Python lists of ints would take 70)."""
        state = np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0]
        generator = torch.Generator().manual_seed(int(state))
        slots = torch.randperm(self.num_samples, generator=generator).double()
        within = torch.rand(self.num_samples, generator=generator, dtype=torch.float64)
        width = self.size / self.num_samples
        first, end = (slots * width).floor(), ((slots + 1) * width).floor().clamp(max=self.size)
        offsets = first + (within * (end - first)).floor().clamp(max=end - first - 1)
        seeds = torch.randint(0, 2**62, (self.num_samples,), generator=generator)
        return offsets.long(), seeds

    def __iter__(self) -> Iterator[tuple[int, int]]:
        offsets, seeds = self.draws(self.epoch)
        start, self.skip = self.skip, 0
        self.epoch += 1
        for i in range(start, len(self)):
            draw = (self.rank + self.world_size * i) % self.num_samples
            yield int(offsets[draw]), int(seeds[draw])


def window_offset(key: int | tuple[int, int]) -> int:
    """The offset of a window dataset's key: an offset, or (offset, seed of the draw)."""
    return key[0] if isinstance(key, tuple) else key


class RandomWindows(Dataset):
    """Item i (or (i, seed)): the window of block_size + 1 tokens starting at offset i."""

    def __init__(self, ids: np.ndarray, block_size: int) -> None:
        self.ids, self.block_size = ids, block_size

    def __len__(self) -> int:
        return len(self.ids) - self.block_size

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        i = window_offset(key)
        window = torch.from_numpy(self.ids[i : i + self.block_size + 1].astype(np.int64))
        return {"input_ids": window[:-1], "targets": window[1:]}


class SequentialWindows(Dataset):
    """Non-overlapping windows; the last one is padded, its padding ignored by the loss.
    With a token `state` (`seqgen.state`), each window carries it, from the stream's start:
    the state at each window's start is found once, in one pass over the stream (computing
    it from the stream's start for every window took minutes per pass over ASAP's 8 hours of
    validation music)."""

    def __init__(
        self, ids: np.ndarray, block_size: int, pad_id: int, state: TokenState | None = None
    ) -> None:
        self.ids, self.block_size, self.pad_id = ids, block_size, pad_id
        self.state = state
        self.before: list[np.ndarray | None] = []  # the state before each window's inputs
        if state is not None:
            before = None
            for start in range(0, len(self) * block_size, block_size):
                self.before.append(before)
                before = state.sequence(ids[start : start + block_size], before)[-1]

    def __len__(self) -> int:
        return -(-(len(self.ids) - 1) // self.block_size)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        start = i * self.block_size
        end = start + self.block_size + 1
        states = None
        if self.state is not None:  # after each input
            inputs = self.ids[start : min(end, len(self.ids)) - 1]
            states = self.state.sequence(inputs, self.before[i])
        return padded_window(self.ids[start:end], self.block_size, self.pad_id, states)


def padded_window(
    ids: np.ndarray, block_size: int, pad_id: int, states: np.ndarray | None = None
) -> dict[str, torch.Tensor]:
    """Inputs and targets of up to block_size + 1 ids, padded to block_size; the padding is
    ignored by the loss. With `states` (the token state after each input), also "state"
    (block_size, size), zeros at the padding."""
    window = torch.from_numpy(np.asarray(ids, dtype=np.int64))
    inputs = torch.full((block_size,), pad_id, dtype=torch.long)
    targets = torch.full((block_size,), IGNORE_INDEX, dtype=torch.long)
    inputs[: len(window) - 1] = window[:-1]
    targets[: len(window) - 1] = window[1:]
    out = {"input_ids": inputs, "targets": targets}
    if states is not None:
        state = torch.zeros(block_size, states.shape[1], dtype=torch.float32)
        state[: len(window) - 1] = torch.from_numpy(np.asarray(states[: len(window) - 1]))
        out["state"] = state
    return out
