"""MIDI corpora for the music task: `.mid`/`.midi` files found recursively (or named in a
.txt list, or a Hugging Face dataset of MIDI bytes), parsed once with symusic into quantised
notes by `datasets.map` in several processes, and cached. A file that cannot be read, or has
no notes, is skipped and reported with its reason; it never stops the run.

Training draws windows of the context length from `<bos> events <eos>` streams; with
augmentation each draw first transposes the performance (up to +-3 semitones; notes pushed
out of 0-127 are dropped) and stretches its time (x0.95-1.05), then encodes it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from seqgen.data import is_saved_dataset, missing_local_path, padded_window, window_offset
from seqgen.errors import DataError
from seqgen.files import atomic_directory, cache_dir, exclusive
from seqgen.progress import dataset_bars
from seqgen.shard_writer import default_num_proc
from seqgen.state import TokenState
from seqgen_tasks.music.events import STEPS_PER_SECOND, Notes, encode_notes, is_note_off, quantize
from seqgen_tasks.music.splits import piece_of
from seqgen_tasks.music.state import counts_after, sounding_counts

log = logging.getLogger("seqgen")

MIDI_SUFFIXES = {".mid", ".midi"}
ENCODING_VERSION = 1  # bump when the encoding changes: cached corpora are rebuilt
# `release_weight` weighs a release only while at least this many notes sound: trained
# plainly, a model gives releases the performers' probability where one or two notes sound
# and too little from three on (benchmarks/music_releases.py on ASAP's dev), so weighing
# every release over-predicts them in thin textures and shortens their notes
WEIGHTED_FROM_SOUNDING = 3


def find_midi(source: str) -> list[Path]:
    """MIDI files under a directory (recursive), a single file, or those listed in a .txt."""
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(
            p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in MIDI_SUFFIXES
        )
    elif path.is_file() and path.suffix.lower() in MIDI_SUFFIXES:
        files = [path]
    elif path.is_file() and path.suffix == ".txt":
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        files = [(path.parent / line).resolve() for line in lines]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise DataError(f"{path}: {len(missing)} listed files do not exist, e.g. {missing[0]}")
    else:
        raise DataError(f"{path}: not a MIDI file, a directory of them, or a .txt list of them")
    if not files:
        raise DataError(f"{path}: no .mid or .midi files")
    return files


def _encode_batch(batch: dict[str, list]) -> dict[str, list]:
    """datasets.map worker: MIDI paths (or bytes) -> quantised note arrays, or an error."""
    import symusic

    from seqgen_tasks.music.midi import notes_from_symusic

    out: dict[str, list] = {k: [] for k in ("pitch", "start", "end", "velocity", "error")}
    sources = batch["path"] if "path" in batch else batch["midi"]
    for source in sources:
        notes, error = Notes.empty(), ""
        try:
            score = (
                symusic.Score(source)
                if isinstance(source, str)
                else symusic.Score.from_midi(source)
            )
            notes = quantize(notes_from_symusic(score)).sorted()
            if len(notes) == 0:
                error = "no notes (empty, or drums only)"
        except Exception as err:  # symusic raises several types for damaged files
            detail = str(err).splitlines()[0][:200] if str(err) else ""
            error = f"unreadable MIDI ({type(err).__name__}: {detail})"
        for key in ("pitch", "start", "end", "velocity"):
            out[key].append(getattr(notes, key).astype(np.int32))
        out["error"].append(error)
    return out


def load_corpus(
    source: str, split: str = "train", num_proc: int | None = None
) -> tuple[list[Notes], dict[str, Any]]:
    """The performances of `source` as quantised notes, and a report of what was skipped and
    of the piece of each performance. Parsed once, in `num_proc` processes (default: a
    process per core), and cached (`seqgen.files.cache_dir`)."""
    import datasets

    path = Path(source).expanduser()
    if missing_local_path(source, MIDI_SUFFIXES | {".txt"}):
        raise DataError(f"{path}: no such file or directory")
    if path.exists() and not is_saved_dataset(path):
        files = find_midi(source)
        names = [str(f) for f in files]
        root = path if path.is_dir() else path.parent
        pieces = [piece_of(f, root) for f in files]
        key = [(n, os.path.getsize(n), os.stat(n).st_mtime_ns) for n in names]
        table = datasets.Dataset.from_dict({"path": names})
    else:
        from seqgen.data import load_hf_dataset

        table = load_hf_dataset(source, None, split)
        column = midi_column(table, f"{source} [{split}]")
        table = table.select_columns([column])
        if column != "midi":
            table = table.rename_column(column, "midi")
        names = [f"{source} [{split}] row {i}" for i in range(len(table))]
        pieces = [f"row {i}" for i in range(len(table))]
        key = [source, split, table._fingerprint]
    digest = hashlib.sha256(json.dumps([ENCODING_VERSION, key]).encode()).hexdigest()[:24]
    cached = cache_dir("midi") / digest
    waiting = f"waiting for another process encoding {source} into {cached}"
    with dataset_bars(), exclusive(cached.with_name(cached.name + ".lock"), waiting):
        encoded = _cached_encoding(cached)
        if encoded is None:
            cores = num_proc or default_num_proc()
            procs = min(cores, max(1, len(table) // 8))  # a process pays off from ~8 files
            started = time.monotonic()
            log.info(
                "encoding %s MIDI files of %s (%d process%s; cached for next time)",
                f"{len(table):,}",
                source,
                procs,
                "es" if procs > 1 else "",
            )
            encoded = table.map(
                _encode_batch,
                batched=True,
                batch_size=8,
                desc="encoding MIDI",
                num_proc=procs if procs > 1 else None,
                remove_columns=table.column_names,
            )
            with atomic_directory(cached) as partial:
                encoded.save_to_disk(str(partial))
            log.info("encoded %s files in %.1f s", f"{len(table):,}", time.monotonic() - started)
            encoded = datasets.load_from_disk(str(cached))
    if len(encoded) != len(names):
        raise DataError(
            f"{cached}: the cached encoding has {len(encoded)} rows for "
            f"{len(names)} files; delete it to rebuild"
        )
    performances, kept_pieces, skipped = [], [], []
    for name, piece, row in zip(names, pieces, encoded.with_format("numpy"), strict=True):
        if row["error"]:
            skipped.append({"file": name, "reason": str(row["error"])})
            continue
        performances.append(
            Notes(*(np.asarray(row[k], np.int64) for k in ("pitch", "start", "end", "velocity")))
        )
        kept_pieces.append(piece)
    report = {
        "files": len(names),
        "encoded": len(performances),
        "pieces": kept_pieces,  # of each performance (seqgen_tasks.music.splits)
        "skipped": skipped,
        "notes": int(sum(len(p) for p in performances)),
        "seconds": total_seconds(performances),
    }
    return performances, report


def midi_column(table, name: str) -> str:
    """The one column of bytes in a dataset's `table`: its MIDI files."""
    found = [
        column
        for column, feature in table.features.items()
        if getattr(feature, "dtype", None) in ("binary", "large_binary")
    ]
    if len(found) != 1:
        columns = ", ".join(
            f"{c} ({getattr(f, 'dtype', type(f).__name__)})" for c, f in table.features.items()
        )
        raise DataError(
            f"{name}: a MIDI dataset has one column of bytes, the MIDI files; found "
            f"{len(found)} among {columns}"
        )
    return found[0]


def _cached_encoding(cached: Path):
    """The encoded corpus cached in `cached`, or None if there is none or it is damaged (then
    it is removed, to be rebuilt)."""
    import datasets

    if not cached.exists():
        return None
    try:
        return datasets.load_from_disk(str(cached))
    except Exception as err:  # datasets raises many types for a damaged folder
        log.warning(
            "%s: damaged cache (%s: %s); encoding again",
            cached,
            type(err).__name__,
            str(err).splitlines()[0] if str(err) else "",
        )
        shutil.rmtree(cached, ignore_errors=True)
        return None


def total_seconds(performances: list[Notes]) -> float:
    """Length of the performances in seconds, each to its last release."""
    return sum(int(p.end.max()) for p in performances if len(p)) / STEPS_PER_SECOND


def augment(notes: Notes, semitones: int, stretch: float) -> Notes:
    """Transpose (dropping notes pushed out of 0-127) and stretch time, in 10 ms steps."""
    pitch = notes.pitch + semitones
    keep = (pitch >= 0) & (pitch < 128)
    start = np.floor(notes.start[keep] * stretch + 0.5).astype(np.int64)
    end = np.maximum(np.floor(notes.end[keep] * stretch + 0.5).astype(np.int64), start + 1)
    return Notes(pitch[keep], start, end, notes.velocity[keep])


class PerformanceWindows(Dataset):
    """Windows of block_size + 1 ids from `<bos> events <eos>` of the performances.

    Item i lies at offset i of the streams laid end to end, so a sampler over the items
    draws a performance in proportion to its length (and shards draws across ranks). The
    window starts at the same relative place among the performance's possible starts; with
    augmentation the performance is first transposed and stretched, afresh on every draw
    (item (i, seed) draws the augmentation from the seed that the sampler gives each draw).
    With a token `state`, each window carries the state after each input, computed from the
    performance's start (notes struck before the window are still sounding in it). With a
    `release_weight` other than 1, each window carries the weight of each target in the
    loss (`loss_mask`): a release (NOTE_OFF) made while WEIGHTED_FROM_SOUNDING or more
    notes sound counts that many times any other event.
    """

    def __init__(
        self,
        performances: list[Notes],
        block_size: int,
        bos_id: int,
        eos_id: int,
        pad_id: int,
        augment: bool = True,
        transpose: int = 3,
        stretch: tuple[float, float] = (0.95, 1.05),
        state: TokenState | None = None,
        release_weight: float = 1.0,
    ) -> None:
        if not performances:
            raise DataError("no performances to train on")
        self.performances, self.block_size = performances, block_size
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
        self.augment, self.transpose, self.stretch = augment, transpose, stretch
        self.state, self.release_weight = state, release_weight
        lengths = np.array([len(encode_notes(p)) + 2 for p in performances])
        self.starts = np.concatenate([[0], np.cumsum(lengths)])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        i = window_offset(key)
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        place = (i - self.starts[k]) / (self.starts[k + 1] - self.starts[k])  # in [0, 1)
        notes = self.performances[k]
        if self.augment:  # the draw's seed (from the sampler), else the offset
            rng = np.random.default_rng(key[1] if isinstance(key, tuple) else i)
            semitones = int(rng.integers(-self.transpose, self.transpose + 1))
            low, high = self.stretch
            notes = augment(notes, semitones, low + (high - low) * float(rng.random()))
        ids = np.concatenate([[self.bos_id], encode_notes(notes), [self.eos_id]])
        n = self.block_size + 1
        offset = int(place * max(1, len(ids) - n + 1))
        window = ids[offset : offset + n]
        states = None
        if self.state is not None:  # after each input: ids up to the window's last input
            states = self.state.window(ids[: offset + len(window) - 1], offset)
        out = padded_window(window, self.block_size, self.pad_id, states)
        if self.release_weight != 1.0:  # the loss's weight of each target
            inputs = ids[offset : offset + len(window) - 1]
            sounding = sounding_counts(inputs, counts_after(ids[:offset])).sum(axis=1)
            weighed = np.zeros(self.block_size, bool)
            weighed[: len(sounding)] = sounding >= WEIGHTED_FROM_SOUNDING
            releases = is_note_off(out["targets"]) & torch.from_numpy(weighed)
            out["loss_mask"] = 1.0 + (self.release_weight - 1.0) * releases.float()
        return out


def event_stream(performances: list[Notes], bos_id: int, eos_id: int) -> np.ndarray:
    """All performances as one id stream, each `<bos> events <eos>` (for validation)."""
    parts = [np.concatenate([[bos_id], encode_notes(p), [eos_id]]) for p in performances]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
