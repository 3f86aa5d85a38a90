"""The music task: piano performances as Music Transformer's 388 events, learned like a
language, continued from a user's MIDI prompt into a MIDI file.

    seqgen pretrain --config configs/music/pop909.yaml
    seqgen generate --ckpt runs/pop909 --prompt in.mid --prompt-seconds 10 --seconds 30 \
        --out out.mid --piano-roll out.png
    seqgen evaluate --ckpt runs/pop909 --data held_out_midi/

Training draws augmented windows from whole performances (`seqgen_tasks.music.data`), so the task
brings its own data module instead of encoding fixed examples.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pretty_midi

from seqgen.data import SequentialWindows, WindowDataModule
from seqgen.errors import ConfigError, DataError
from seqgen.tokenizer import Tokenizer, TokenizerConfig
from seqgen_tasks.music.data import PerformanceWindows, event_stream, load_corpus, total_seconds
from seqgen_tasks.music.events import NUM_EVENTS, Notes, encode_notes, quantize
from seqgen_tasks.music.midi import decode_midi, notes_from_pretty_midi
from seqgen_tasks.music.tokenizer import PerformanceTokenizer

log = logging.getLogger("seqgen")


@dataclass
class MusicData:
    """MIDI corpora to train on (`data.*` of a music config)."""

    train: str = "data/pop909"
    """Training MIDI: a directory (searched recursively), a .mid file, a .txt list of files, a
    `save_to_disk` folder or a Hugging Face dataset with a column of MIDI bytes."""
    val: str | None = None
    """Held-out MIDI, in the same forms (default: the last val_fraction of the training
    performances, in file-name order)."""
    val_fraction: float = 0.05
    """Share of the training performances held out when `val` is not given."""
    midi_column: str = "midi"
    """Column of MIDI bytes in a dataset."""
    train_split: str = "train"
    """Dataset split to train on (datasets only)."""
    val_split: str = "validation"
    """Dataset split of `val` (datasets only)."""
    cache_dir: str | None = None
    """Where encoded corpora are cached (default: ~/.cache/seqgen/midi)."""
    num_proc: int = 2
    """Processes that parse MIDI files (once; the result is cached)."""
    augment: bool = True
    """Transpose and stretch every training draw (never validation)."""
    max_transpose: int = 3
    """Draws are transposed by up to this many semitones either way."""
    max_stretch: float = 0.05
    """Draws are stretched in time by a factor in [1 - max_stretch, 1 + max_stretch]."""
    num_workers: int = 0
    """DataLoader processes preparing augmented windows."""

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        if not 0 <= self.max_transpose <= 12:
            raise ConfigError(f"data.max_transpose must be in 0-12, got {self.max_transpose}")
        if not 0.0 <= self.max_stretch < 0.5:
            raise ConfigError(f"data.max_stretch must be in [0, 0.5), got {self.max_stretch}")


class MusicTask:
    name = "music"
    data_config = MusicData
    lm_weight = 0.0  # every event is a target already
    continues_prompt = True
    generation_defaults = {"temperature": 1.0, "max_new_tokens": 2000}
    data_builders: dict = {}

    def __init__(self) -> None:
        self.settings = MusicData()
        self.stats: dict[str, Any] = {}
        self._corpora: dict[tuple, tuple[list[Notes], dict[str, Any]]] = {}

    # ------------------------------------------------------------ training

    def special_tokens(self, data: MusicData) -> list[str]:
        return []

    def load(self, data: MusicData, split: str) -> list[Notes]:
        held_out = split == "val" and data.val is not None
        source = data.val if held_out else data.train
        dataset_split = data.val_split if held_out else data.train_split
        key = (source, data.cache_dir, data.midi_column, dataset_split)
        if key not in self._corpora:  # the train and val splits of one corpus: parsed once
            self._corpora[key] = load_corpus(source, data.cache_dir, data.num_proc,
                                             data.midi_column, dataset_split)  # fmt: skip
        performances, report = self._corpora[key]
        if split == "train" or held_out:  # each corpus reported once
            prefix = "val_" if held_out else ""
            for skipped in report["skipped"]:
                log.warning("skipped %s: %s", skipped["file"], skipped["reason"])
            self.stats.update({f"{prefix}files": report["files"],
                               f"{prefix}skipped": len(report["skipped"]),
                               f"{prefix}skipped_files": report["skipped"]})  # fmt: skip
        if data.val is None:
            performances = self._split(performances, data, split)
        hours = round(total_seconds(performances) / 3600, 3)
        self.stats.update({f"{split}_performances": len(performances), f"{split}_hours": hours})
        return performances

    @staticmethod
    def _split(performances: list[Notes], data: MusicData, split: str) -> list[Notes]:
        if len(performances) < 2:
            raise DataError(
                f"{data.train}: {len(performances)} usable performance(s); holding "
                "some out for validation needs 2 or more (or set data.val)"
            )
        held = max(1, math.ceil(len(performances) * data.val_fraction))
        held = min(held, len(performances) - 1)
        return performances[-held:] if split == "val" else performances[:-held]

    def build_tokenizer(self, examples: list, config: TokenizerConfig) -> Tokenizer:
        return PerformanceTokenizer()

    def datamodule(
        self,
        train: list[Notes],
        val: list[Notes],
        tokenizer: Tokenizer,
        block_size: int,
        batch_size: int,
    ) -> WindowDataModule:
        s = self.settings
        windows = PerformanceWindows(
            train,
            block_size,
            tokenizer.bos_id,
            tokenizer.eos_id,
            tokenizer.pad_id,
            augment=s.augment,
            transpose=s.max_transpose,
            stretch=(1 - s.max_stretch, 1 + s.max_stretch),
        )
        stream = event_stream(val, tokenizer.bos_id, tokenizer.eos_id)
        if len(stream) < 2:
            raise DataError("the validation performances have no events")
        held_out = SequentialWindows(stream, block_size, tokenizer.pad_id)
        return WindowDataModule(windows, held_out, batch_size, s.num_workers)

    def options(self, data: MusicData) -> dict[str, Any]:
        return {
            "augment": data.augment,
            "max_transpose": data.max_transpose,
            "max_stretch": data.max_stretch,
            "num_workers": data.num_workers,
        }

    def configure(self, options: dict[str, Any], block_size: int) -> None:
        known = {k: v for k, v in options.items() if k in MusicData.__dataclass_fields__}
        self.settings = MusicData(**known)

    # ------------------------------------------------------------ inference

    def prompt(self, source: Any, tokenizer: Tokenizer) -> list[int]:
        """`<bos>` and the events of a MIDI file (path), PrettyMIDI, quantised Notes or event
        ids; no source (None or "") starts a performance from nothing."""
        if source is None or (isinstance(source, str) and not source):
            events = np.zeros(0, dtype=np.int64)
        elif isinstance(source, Notes):
            events = encode_notes(source)
        elif isinstance(source, np.ndarray | list):
            events = np.asarray(source, dtype=np.int64)
            if len(events) and not ((events >= 0) & (events < NUM_EVENTS)).all():
                raise ValueError(f"a prompt of event ids must hold ids 0-{NUM_EVENTS - 1}")
        else:
            midi = source if isinstance(source, pretty_midi.PrettyMIDI) else read_midi(source)
            events = encode_notes(quantize(notes_from_pretty_midi(midi)))
        return [tokenizer.bos_id, *events.tolist()]

    def decode(self, ids: list[int], tokenizer: Tokenizer) -> pretty_midi.PrettyMIDI:
        return decode_midi(ids)

    def evaluate(self, argv: list[str]) -> dict[str, Any]:
        from seqgen_tasks.music.evaluate import main

        return main(argv)

    def generate_cli(self, argv: list[str]) -> int:
        from seqgen_tasks.music.generate import main

        return main(argv)


def read_midi(path: str | Path) -> pretty_midi.PrettyMIDI:
    """A MIDI file as PrettyMIDI; a missing or unreadable file is a DataError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such MIDI file")
    try:
        return pretty_midi.PrettyMIDI(str(path))
    except Exception as err:  # mido and pretty_midi raise many types for damaged files
        raise DataError(f"{path}: not a readable MIDI file ({type(err).__name__}: {err})") from None
