"""Files and directories written whole or not at all: a crash, a kill -9 or a power cut
leaves the previous version (or nothing), never half of one. Contents are flushed to the disk
(fsync) before the rename that publishes them, and the rename itself before the call returns.
Checkpoints, caches, token shards and reports all write this way."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from seqgen.errors import CheckpointError


@contextmanager
def atomic_directory(directory: str | Path) -> Iterator[Path]:
    """Yield a sibling `NAME.partial` folder to fill; once the block ends without an error
    it replaces `directory` (the old version is removed only after the swap)."""
    directory = Path(directory)
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    sync_tree(partial)
    old = directory.with_name(directory.name + ".old")
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)
        directory.rename(old)
    partial.rename(directory)
    sync_directory(directory.parent)
    shutil.rmtree(old, ignore_errors=True)


def complete_swaps(folder: Path) -> None:
    """Finish what `atomic_directory` left between its two renames in `folder` (a crash
    there leaves `NAME.old`, the previous version, and `NAME.partial`, the new one, written
    and synced before the first rename, but no `NAME`): the new version takes its name. A
    `NAME.old` alone gets its name back."""
    if not folder.is_dir():
        return
    for old in folder.glob("*.old"):
        target = old.with_name(old.name[: -len(".old")])
        if target.exists():
            continue
        partial = target.with_name(target.name + ".partial")
        if partial.is_dir():
            partial.rename(target)
            sync_directory(folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.rename(target)
            sync_directory(folder)


def sync_directory(directory: Path) -> None:
    """Make the renames and new names in `directory` durable."""
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def sync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def sync_tree(directory: Path) -> None:
    """fsync every file under `directory`, then the folders themselves."""
    for folder, _, names in os.walk(directory):
        for name in names:
            sync_file(Path(folder) / name)
        sync_directory(Path(folder))


@contextmanager
def exclusive(lock: Path, waiting: str = "") -> Iterator[None]:
    """Hold an exclusive lock on the file `lock` (created if needed) for the block: processes
    that build the same thing at once (distributed ranks filling one cache) take turns, and
    the later ones find it built. `waiting` is logged if another process holds it."""
    import fcntl
    import logging

    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                logging.getLogger("seqgen").info("%s", waiting)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_json(path: Path, holds: str = "") -> Any:
    """The JSON value in `path`, a file seqgen reads back (checkpoint metadata, a tokenizer's,
    an HF config); a CheckpointError naming the file (and what it `holds`) if it is not JSON."""
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: corrupt{' ' + holds if holds else ''} ({err})") from None


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write; once the block ends without an error
    it replaces `path` in one step (os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(name, 0o666 & ~umask)  # as open() would make it, not mkstemp's owner-only
    try:
        yield Path(name)
        sync_file(Path(name))
        os.replace(name, path)
        sync_directory(path.parent)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


CACHE_VARIABLE = "SEQGEN_CACHE"


def cache_dir(kind: str) -> Path:
    """Where seqgen caches `kind` (tokenized text, encoded MIDI): under $SEQGEN_CACHE, by
    default ~/.cache/seqgen, e.g. on a bigger disk."""
    root = os.environ.get(CACHE_VARIABLE) or "~/.cache/seqgen"
    return Path(root).expanduser() / kind


def check_writable(path: str | None, what: str) -> None:
    """Raise ValueError, before any work, if `path` cannot become a file: it is a directory,
    or a file stands where its folder would be."""
    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"{what} {path} is a directory; give a file name")
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{what} {path}: {parent} is a file, not a folder")
            return
