"""Writing token shards (the format: `seqgen.shards`). `write_shards` runs a task's encoder
over a list of work units (byte ranges of files, row ranges of a dataset) in a pool of
processes and writes their ids in unit order, so the shards are byte-identical for any number
of processes. A shard file appears whole or not at all (written aside, flushed, renamed), and
progress is recorded only after the shards it counts: killed at any point, the same command
goes on from the last recorded unit, keeping every shard recorded, and ends byte-identical to
an uninterrupted run.
"""

from __future__ import annotations

import errno
import itertools
import json
import logging
import multiprocessing
import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np

from seqgen.errors import DataError
from seqgen.files import atomic_file, exclusive, read_json, sync_directory
from seqgen.progress import Progress
from seqgen.shards import FORMAT, INDEX_FILE, PROGRESS_FILE, SPLITS, VERSION, read_index

log = logging.getLogger("seqgen")
SHARD_TOKENS = 1 << 24  # 32 MiB of uint16 ids a shard
CHECKPOINT_SECONDS = 30.0  # the longest stretch of work a kill loses, besides whole shards


Encoder = Callable[[Any], tuple[dict[str, np.ndarray], dict[str, int]]]
"""A work unit to ({split: its ids}, counts to add up such as documents or skipped rows)."""


def write_shards(
    out: Path,
    units: Iterable[Any],
    encode: Encoder,
    *,
    identity: dict[str, Any],
    eos_id: int,
    dtype: np.dtype,
    shard_tokens: int = SHARD_TOKENS,
    num_proc: int = 1,
    initializer: Callable[..., None] | None = None,
    initargs: tuple = (),
    size_of: Callable[[Any], int] = lambda unit: 1,
    total: int | None = None,
    measure: str = "units",
) -> dict[str, Any]:
    """Encode `units` (in `num_proc` processes, each set up by `initializer(*initargs)`) and
    write their ids in order into shards of `shard_tokens` under `out`; returns the index.

    `units` may be a stream (read once, in order). `identity` (JSON) is what the folder is
    made from: a folder, finished or not, made from another is refused, never mixed or
    reused. Progress counts `size_of(unit)` `measure` (bytes, say) out of `total`, if known.
    """
    out.mkdir(parents=True, exist_ok=True)
    with exclusive(out / ".lock", f"waiting for another process preparing {out}"):
        index = finished(out, identity)
        if index is not None:
            log.info(
                "%s is prepared already (%s training tokens)",
                out,
                f"{index['splits']['train']['tokens']:,}",
            )
            return index
        writer = _ShardWriter(out, identity, dtype, eos_id, shard_tokens)
        progress = Progress("tokenized", total, measure)
        units = iter(units)
        for unit in itertools.islice(units, writer.units_done):  # done before a kill
            progress(size_of(unit))
        if writer.units_done:
            log.info(
                "going on from unit %s (%s shards kept)",
                f"{writer.units_done:,}",
                f"{writer.shard_count():,}",
            )
        encoded = _encoded(units, encode, num_proc, initializer, initargs)
        while True:
            try:
                unit, (ids, counts) = next(encoded)
            except StopIteration:
                break
            except BaseException:  # a bad unit, Ctrl-C: keep what the units before it made
                writer.record()
                raise
            writer.add(ids, counts)
            progress(size_of(unit))
        progress.finish()
        return writer.finish()


def _made_from(out: Path) -> tuple[Path, Any]:
    """The index or progress file of `out` (finished or not) and the identity it records."""
    found = out / INDEX_FILE if (out / INDEX_FILE).is_file() else out / PROGRESS_FILE
    if not found.is_file():
        return found, None
    recorded = read_json(found, "shard index")
    return found, recorded.get("identity") if isinstance(recorded, dict) else None


def remove_if_stale(out: Path, identity: dict[str, Any]) -> None:
    """Delete `out` if it holds shards prepared from anything but `identity` (--overwrite)."""
    found, made_from = _made_from(out)
    if found.is_file() and made_from != identity:
        log.warning("--overwrite: removing %s, prepared from other data or settings", out)
        shutil.rmtree(out)


def finished(out: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The index of `out` if it was prepared from `identity`; None if nothing is finished; a
    DataError if `out` holds shards (finished or not) made from anything else."""
    found, made_from = _made_from(out)
    if not found.is_file():
        return None
    if made_from != identity:
        changed = sorted(
            k
            for k in {*identity, *(made_from or {})}
            if (made_from or {}).get(k) != identity.get(k)
        )
        raise DataError(
            f"{out} was prepared from other data or settings ({', '.join(changed)} "
            "differ): choose another --out, or give --overwrite true to prepare "
            "it anew"
        )
    return read_index(out) if found.name == INDEX_FILE else None


def _encoded(
    units: Iterator[Any],
    encode: Encoder,
    num_proc: int,
    initializer: Callable[..., None] | None,
    initargs: tuple,
) -> Iterator[tuple[Any, tuple[dict[str, np.ndarray], dict[str, int]]]]:
    """(unit, `encode(unit)`) for each unit, in order, with at most 2 units a process in
    flight (a slow unit holds back the writer, never memory)."""
    if num_proc <= 1:
        if initializer is not None:
            initializer(*initargs)
        yield from ((unit, encode(unit)) for unit in units)
        return
    # fork: the workers start at once and share the parent's imports; the encoders use no
    # threads, which is what makes fork unsafe. A worker that dies (killed for memory) is an
    # error here, where multiprocessing.Pool would wait for it forever.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    try:
        with ProcessPoolExecutor(num_proc, context, _start_worker, (initializer, initargs)) as pool:
            pending: deque = deque(
                (unit, pool.submit(encode, unit)) for unit in itertools.islice(units, 2 * num_proc)
            )
            while pending:
                unit, future = pending.popleft()
                result = future.result()
                following = next(units, None)
                if following is not None:
                    pending.append((following, pool.submit(encode, following)))
                yield unit, result
    except BrokenProcessPool:  # from a result or a submission, whichever sees it first
        raise DataError(
            "a process tokenizing the corpus died (out of memory?); run the same "
            "command again to go on"
        ) from None


def _start_worker(initializer: Callable[..., None] | None, initargs: tuple) -> None:
    """Set a worker up; on Linux it is also killed with its parent, so that a prepare killed
    with SIGKILL leaves no workers waiting for work (and holding its output pipes) forever."""
    if sys.platform == "linux":
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before the call
            os._exit(1)
    if initializer is not None:
        initializer(*initargs)


class _ShardWriter:
    """Fills each split's shard buffer from the units' ids, writes full shards, and records
    progress (with the unfilled buffers) once a shard is written or every
    CHECKPOINT_SECONDS, always between two units."""

    def __init__(
        self, out: Path, identity: dict[str, Any], dtype: np.dtype, eos_id: int, shard_tokens: int
    ) -> None:
        self.out, self.identity, self.dtype = out, identity, np.dtype(dtype)
        self.eos_id, self.shard_tokens = eos_id, shard_tokens
        self.buffers = {s: np.empty(shard_tokens, dtype=self.dtype) for s in SPLITS}
        self.filled = dict.fromkeys(SPLITS, 0)
        self.shards: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
        self.counts: dict[str, int] = {}
        self.units_done = 0
        self.dirty, self.saved_at = False, time.monotonic()
        state = read_json(out / PROGRESS_FILE) if (out / PROGRESS_FILE).is_file() else None
        if state is not None:
            if state.get("shard_tokens") != shard_tokens or state.get("dtype") != self.dtype.name:
                raise DataError(
                    f"{out / PROGRESS_FILE}: made with other shard settings; "
                    "prepare anew with --overwrite true"
                )
            self.shards, self.counts = state["shards"], state["counts"]
            self.units_done = state["units_done"]
            for split in SPLITS:
                tail = np.fromfile(out / self._tail(split), dtype=self.dtype)
                if len(tail) != state["tails"][split]:
                    raise DataError(
                        f"{out / self._tail(split)}: damaged; prepare anew with --overwrite true"
                    )
                self.buffers[split][: len(tail)] = tail
                self.filled[split] = len(tail)
        self._remove_unrecorded()

    def _tail(self, split: str) -> str:
        """The file of a split's unfilled buffer, named by the record that counts it."""
        return f"{split}/tail-{self.units_done:09d}.bin"

    def _remove_unrecorded(self, tails: bool = True) -> None:
        """Remove what the last record does not count: shards written after it (they are
        written again) and older tails (every tail, once the index is written)."""
        for split in SPLITS:
            folder = self.out / split
            folder.mkdir(exist_ok=True)
            kept = {shard["file"] for shard in self.shards[split]}
            kept |= {self._tail(split)} if tails else set()
            for file in folder.iterdir():
                if f"{split}/{file.name}" not in kept:
                    file.unlink()

    def shard_count(self) -> int:
        return sum(len(shards) for shards in self.shards.values())

    def add(self, ids: dict[str, np.ndarray], counts: dict[str, int]) -> None:
        for split, values in ids.items():
            values = np.asarray(values)
            while len(values):
                room = self.shard_tokens - self.filled[split]
                taken = values[:room]
                self.buffers[split][self.filled[split] : self.filled[split] + len(taken)] = taken
                self.filled[split] += len(taken)
                values = values[len(taken) :]
                if self.filled[split] == self.shard_tokens:
                    self._write_shard(split)
        for key, value in counts.items():
            self.counts[key] = self.counts.get(key, 0) + value
        self.units_done += 1
        if self.dirty or time.monotonic() - self.saved_at >= CHECKPOINT_SECONDS:
            self.record()

    def _write_shard(self, split: str) -> None:
        ids = self.buffers[split][: self.filled[split]]
        name = f"{split}/shard-{len(self.shards[split]):06d}.bin"
        self._write(self.out / name, ids)
        documents = int(np.count_nonzero(ids == self.eos_id))
        self.shards[split].append({"file": name, "tokens": len(ids), "documents": documents})
        self.filled[split] = 0
        self.dirty = True

    def _write(self, path: Path, ids: np.ndarray) -> None:
        """Write `path` whole or not at all; a full disk is one clear error."""
        try:
            with atomic_file(path) as partial:
                ids.tofile(partial)
        except OSError as err:
            if err.errno != errno.ENOSPC:
                raise DataError(f"{path}: cannot write ({err.strerror})") from None
            free = shutil.disk_usage(path.parent).free
            raise DataError(
                f"{path}: the disk is full ({free:,} bytes free); free space and "
                "run the same command again: the "
                f"{self.shard_count():,} shards recorded are kept"
            ) from None

    def record(self) -> None:
        """Save the unfilled buffers, then the progress that counts them and the shards."""
        for split in SPLITS:
            self._write(self.out / self._tail(split), self.buffers[split][: self.filled[split]])
        state = {
            "identity": self.identity,
            "shard_tokens": self.shard_tokens,
            "dtype": self.dtype.name,
            "units_done": self.units_done,
            "counts": self.counts,
            "shards": self.shards,
            "tails": dict(self.filled),
        }
        with atomic_file(self.out / PROGRESS_FILE) as partial:
            partial.write_text(json.dumps(state) + "\n")
        self._remove_unrecorded()
        self.dirty, self.saved_at = False, time.monotonic()

    def finish(self) -> dict[str, Any]:
        for split in SPLITS:
            if self.filled[split]:
                self._write_shard(split)
        index = {
            "format": FORMAT,
            "version": VERSION,
            "identity": self.identity,
            "dtype": self.dtype.name,
            "eos_id": self.eos_id,
            "shard_tokens": self.shard_tokens,
            "counts": self.counts,
            "splits": {
                split: {
                    "tokens": sum(s["tokens"] for s in shards),
                    "documents": sum(s["documents"] for s in shards),
                    "shards": shards,
                }
                for split, shards in self.shards.items()
            },
        }
        with atomic_file(self.out / INDEX_FILE) as partial:
            partial.write_text(json.dumps(index, indent=1) + "\n")
        (self.out / PROGRESS_FILE).unlink(missing_ok=True)
        self._remove_unrecorded(tails=False)
        sync_directory(self.out)
        return index


def default_num_proc() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1
