"""The music task: piano performances as Music Transformer's 388 events, learned like a
language, continued from a user's MIDI prompt into a MIDI file.

    seqgen pretrain --config configs/music/pop909.yaml
    seqgen generate --ckpt runs/pop909 --prompt in.mid --prompt_seconds 10 --seconds 30 \
        --out out.mid --piano_roll out.png
    seqgen evaluate --ckpt runs/pop909 --data held_out_midi/

Training draws augmented windows from whole performances (`seqgen_tasks.music.data`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pretty_midi

from seqgen.data import SequentialWindows
from seqgen.errors import ConfigError, DataError
from seqgen.tasks import BuildsDatasets, Evaluates, GeneratesFiles, Splits, Task, Windows
from seqgen.tokenizer import Tokenizer, TokenizerConfig
from seqgen_tasks.music import evaluate as evaluation
from seqgen_tasks.music import generate as generation
from seqgen_tasks.music import sources
from seqgen_tasks.music.data import PerformanceWindows, event_stream, load_corpus, total_seconds
from seqgen_tasks.music.events import NUM_EVENTS, Notes, encode_notes, quantize
from seqgen_tasks.music.midi import decode_midi, notes_from_pretty_midi, read_midi
from seqgen_tasks.music.splits import assign
from seqgen_tasks.music.state import SoundingAges, SoundingPitches
from seqgen_tasks.music.tokenizer import PerformanceTokenizer, readable_event

log = logging.getLogger("seqgen")
NoteState = Literal["ages", "pitches", "none"]


@dataclass
class MusicData:
    """MIDI corpora to train on (`data.*` of a music config)."""

    train: str = "data/pop909"
    """Training MIDI: a directory (searched recursively), a .mid file, a .txt list of files, a
    `save_to_disk` folder or a Hugging Face dataset (its `train` split) with one column of
    bytes, the MIDI files."""
    val: str | None = None
    """Dev MIDI, in the same forms (a dataset's `validation` split), that training validates
    on (default: the dev pieces of train: 5% of its pieces, by a hash of their names; see
    `seqgen_tasks.music.splits`)."""
    test: str | None = None
    """Test MIDI, in the same forms (a dataset's `test` split), which training never reads;
    `seqgen evaluate --split test` scores it (default: the test pieces of train, another
    5%, held out of training)."""
    augment: bool = True
    """Transpose every training draw by up to 3 semitones either way and stretch its time by
    up to 5%, as the Music Transformer did (never validation)."""
    note_state: NoteState = "ages"
    """What the model reads beside every event of the notes sounding, counted from the
    performance's start, so past its context window too. `pitches`: how many notes of each
    pitch sound (after 10 min on POP909: held-out NLL 2.61 nats/event against 2.90 without,
    and continuations overlap the real ones 0.85 against 0.73 in note duration, 0.86
    against 0.56 in polyphony). `ages` (default): also how long ago each was struck, up to
    5 s, so a note just begun differs from one due to end (after 10 min, two models each:
    NLL on ASAP 2.69 against 2.74-2.76 with the pitches alone, on POP909 2.51 against
    2.60-2.61). `none`: nothing, for a model that must export to Hugging Face GPT-2. It
    sets the model's state_size, so it is chosen when a model is made."""
    release_weight: float = 2.0
    """How many times a release (NOTE_OFF) made while three or more notes sound counts in
    the training loss against any other event. A model trained at 1 gives releases their
    share while one or two notes sound but too little as more do, so alone (`--rules
    valid`) it piles its chords up and leans on the hold limits of `--rules all`. At 2 it
    ends its notes by itself: on the dev splits (three models each, paired), alone it
    played as the models at 1 did with the rules on POP909 (-0.002 [-0.021, +0.016] in
    mean overlap) and better on ASAP (+0.057 [+0.039, +0.067]), at a cost in likelihood
    (dev NLL 0.04-0.05 nats per event higher; 1 for a likelihood to compare with others').
    docs/benchmarks.md has the measurements."""

    def __post_init__(self) -> None:
        if not 0 < self.release_weight < math.inf:
            raise ConfigError(
                f"data.release_weight must be a number > 0, got {self.release_weight}"
            )


def stored_state(options: dict[str, Any]) -> Any:
    """`note_state` as a checkpoint stored it: checkpoints from before it took three values
    stored `note_state: true|false` and `note_ages: true|false`."""
    state = options.get("note_state", "none")
    if isinstance(state, bool):
        return ("ages" if options.get("note_ages") else "pitches") if state else "none"
    return state


MOST_PROMPT_EVENTS = 1_000_000  # hours of piano; a few notes far apart may ask for 1e8


class MusicTask(Task, Evaluates, GeneratesFiles, BuildsDatasets):
    name = "music"
    data_config = MusicData
    stored_options = ("augment", "note_state")
    option_defaults = {"note_state": "none"}  # checkpoints from before it
    continues_prompt = True
    eval_config = evaluation.MusicEval
    datasets = sources.DATASETS
    evaluate = staticmethod(evaluation.evaluate)
    generate_options = generation.MusicGenerate
    output_suffix = ".mid"
    extra_files = {"piano_roll": ".png", "wav": ".wav"}
    local_files = ("soundfont",)

    def __init__(self, data: MusicData | None = None, block_size: int = 1024) -> None:
        super().__init__(data, block_size)
        self.hold_limits: list[float] | None = None
        """Seconds generation lets a note of each octave sound (`generation.hold_limits`):
        set from the training data, stored in the checkpoint; None for older ones."""

    @classmethod
    def from_options(
        cls, options: dict[str, Any], block_size: int, decoding: dict[str, Any] | None = None
    ) -> MusicTask:
        task = super().from_options(
            {**options, "note_state": stored_state(options)}, block_size, decoding
        )
        octaves = generation.OCTAVES
        seconds = options.get("hold_limits")
        if seconds is not None and not (
            isinstance(seconds, list)
            and len(seconds) == octaves
            and all(type(x) in (int, float) and x > 0 for x in seconds)
        ):
            raise ConfigError(
                f"the checkpoint's task_options.hold_limits must be {octaves} seconds > 0, "
                f"got {seconds!r}"
            )
        task.hold_limits = seconds
        return task

    def learned_options(self, splits: Splits) -> dict[str, Any]:
        """How long the training performances' notes of each octave sound: generation's
        hold limits."""
        return {"hold_limits": generation.hold_limits(splits.train)}

    def options(self) -> dict[str, Any]:
        stored = super().options()
        if self.hold_limits is not None:
            stored["hold_limits"] = self.hold_limits
        return stored

    def prepare(
        self, ids: list[int], options: generation.MusicGenerate, settings: dict[str, Any]
    ) -> tuple[list[int], dict[str, Any]]:
        return generation.prepare(ids, options, settings, self.hold_limits)

    def write(
        self,
        ids: list[int],
        new: list[int],
        tokenizer: Tokenizer,
        options: generation.MusicGenerate,
        path: Path,
    ) -> list[str]:
        return generation.write(ids, new, tokenizer, options, path, self.hold_limits)

    def token_state(self) -> SoundingPitches | None:
        state = self.data.note_state
        return None if state == "none" else SoundingAges() if state == "ages" else SoundingPitches()

    def generation_defaults(self) -> dict[str, Any]:
        # temperature 1 from the whole distribution: the best on both recipes' dev splits
        # (docs/benchmarks.md, sampling decided on dev)
        return {"temperature": 1.0, "max_new_tokens": 2000}

    # ------------------------------------------------------------ training

    def load(self) -> Splits:
        """The training performances and the dev ones; test is never read here."""
        found = self.performances(("train", "dev"))
        for split, chosen in found.items():
            hours = round(total_seconds(chosen) / 3600, 3)
            self.stats.update({f"{split}_performances": len(chosen), f"{split}_hours": hours})
        return Splits(found["train"], found["dev"])

    def performances(self, wanted: Sequence[str]) -> dict[str, list[Notes]]:
        """The performances of each split in `wanted` (train, dev, test): data.val and
        data.test where given, else carved out of data.train by piece."""
        data = self.data
        given = {"dev": (data.val, "validation"), "test": (data.test, "test")}
        carved = [name for name, (source, _) in given.items() if source is None]
        found: dict[str, list[Notes]] = {}
        if any(name in wanted for name in ("train", *carved)):
            performances, pieces = self._corpus(data.train, "train", "")
            assigned = assign(pieces, carved, data.train)
            for name in ("train", *carved):
                found[name] = [p for p, s in zip(performances, assigned, strict=True) if s == name]
            self.stats["carved_from_train"] = {
                name: sorted(
                    {piece for piece, s in zip(pieces, assigned, strict=True) if s == name}
                )
                for name in carved
            }
        for name in wanted:
            source, split = given.get(name, (None, ""))
            if source is not None:
                found[name] = self._corpus(source, split, f"{name}_")[0]
        return {name: found[name] for name in wanted}

    def _corpus(self, source: str, split: str, prefix: str) -> tuple[list[Notes], list[str]]:
        performances, report = load_corpus(source, split)
        for skipped in report["skipped"]:
            log.warning("skipped %s: %s", skipped["file"], skipped["reason"])
        self.stats.update(
            {
                f"{prefix}files": report["files"],
                f"{prefix}skipped": len(report["skipped"]),
                f"{prefix}skipped_files": report["skipped"],
            }
        )
        return performances, report["pieces"]

    def build_tokenizer(self, splits: Splits, config: TokenizerConfig) -> Tokenizer:
        return PerformanceTokenizer()

    def training_data(self, splits: Splits, tokenizer: Tokenizer) -> Windows:
        """Augmented windows drawn from whole performances; validation never augmented."""
        s, state = self.data, self.token_state()
        windows = PerformanceWindows(
            splits.train,
            self.block_size,
            tokenizer.bos_id,
            tokenizer.eos_id,
            tokenizer.pad_id,
            augment=s.augment,
            state=state,
            release_weight=s.release_weight,
        )
        stream = event_stream(splits.val, tokenizer.bos_id, tokenizer.eos_id)
        if len(stream) < 2:
            raise DataError("the validation performances have no events")
        held_out = SequentialWindows(stream, self.block_size, tokenizer.pad_id, state)
        return Windows(windows, held_out)

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
            events = encode_notes(quantize(notes_from_pretty_midi(midi)), most=MOST_PROMPT_EVENTS)
            if len(events) == 0:
                log.warning(
                    "warning: %s has no notes (drums only?): starting from nothing",
                    source if isinstance(source, str) else "the prompt",
                )
        return [tokenizer.bos_id, *events.tolist()]

    def decode(self, ids: list[int], tokenizer: Tokenizer) -> pretty_midi.PrettyMIDI:
        return decode_midi(ids)

    def token_label(self, token: int, tokenizer: Tokenizer) -> str:
        if token < NUM_EVENTS:
            return readable_event(token)
        return tokenizer.decode([token], skip_special=False)
