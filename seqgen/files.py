"""Files and directories written whole or not at all: a crash or kill -9 leaves the previous
version (or nothing), never half of one. Checkpoints, caches and reports all write this way."""

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
    old = directory.with_name(directory.name + ".old")
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)
        directory.rename(old)
    partial.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


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
    try:
        yield Path(name)
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


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
