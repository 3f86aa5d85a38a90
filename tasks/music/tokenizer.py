"""The performance vocabulary as a seqgen tokenizer: the 388 event ids, then pad, bos, eos
(and any special tokens a task appends). Its text form names the events, for reading.
Checkpoints find it by its kind, `performance`, through the `seqgen.tokenizers` entry point."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pretty_midi

from seqgen.errors import CheckpointError
from seqgen.tokenizer import META_FILE, append_new, read_tokenizer_meta
from seqgen_tasks.music.events import (
    NOTE_OFF,
    NUM_EVENTS,
    STEPS_PER_SECOND,
    TIME_SHIFT,
    VELOCITY,
    bin_velocity,
    is_note_off,
    is_note_on,
    is_time_shift,
)

BUILTIN_SPECIALS = ("<pad>", "<s>", "</s>")


def event_name(i: int) -> str:
    if is_note_on(i):
        return f"NOTE_ON_{i}"
    if is_note_off(i):
        return f"NOTE_OFF_{i - NOTE_OFF}"
    if is_time_shift(i):
        return f"TIME_SHIFT_{i - TIME_SHIFT}"
    return f"VELOCITY_{i - VELOCITY}"


def readable_event(i: int) -> str:
    """An event as a person reads it: `ON C4`, `OFF C4`, `SHIFT 120ms`, `VEL 65`."""
    if is_note_on(i) or is_note_off(i):
        kind = "ON" if is_note_on(i) else "OFF"
        return f"{kind} {pretty_midi.note_number_to_name(i % 128)}"
    if is_time_shift(i):
        return f"SHIFT {(i - TIME_SHIFT) * 1000 // STEPS_PER_SECOND}ms"
    return f"VEL {int(bin_velocity(i - VELOCITY))}"


class PerformanceTokenizer:
    """Ids 0-387 are performance events; 388 <pad>, 389 <s> (bos), 390 </s> (eos)."""

    kind = "performance"

    def __init__(self, special_tokens: Sequence[str] = ()) -> None:
        self.pad_id, self.bos_id, self.eos_id = NUM_EVENTS, NUM_EVENTS + 1, NUM_EVENTS + 2
        self.special_tokens: list[str] = list(BUILTIN_SPECIALS)
        self.add_special_tokens(special_tokens)

    @property
    def vocab_size(self) -> int:
        return NUM_EVENTS + len(self.special_tokens)

    def add_special_tokens(self, tokens: Sequence[str]) -> list[int]:
        append_new(self.special_tokens, tokens)
        return [self.special_id(t) for t in tokens]

    def special_id(self, token: str) -> int:
        if token not in self.special_tokens:
            raise KeyError(f"{token!r} is not a special token of this tokenizer")
        return NUM_EVENTS + self.special_tokens.index(token)

    def encode(self, text: str) -> list[int]:
        """Ids of event names separated by spaces (the inverse of `decode`)."""
        names = {event_name(i): i for i in range(NUM_EVENTS)}
        names.update({t: self.special_id(t) for t in self.special_tokens})
        try:
            return [names[word] for word in text.split()]
        except KeyError as err:
            raise ValueError(f"not a performance event: {err.args[0]!r}") from None

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        words = []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary (size {self.vocab_size})")
            if i < NUM_EVENTS:
                words.append(event_name(i))
            elif not skip_special:
                words.append(self.special_tokens[i - NUM_EVENTS])
        return " ".join(words)

    def token_byte_lengths(self) -> list[int]:
        return [0] * self.vocab_size  # not text: no bits per byte

    def to_hf(self):
        """The vocabulary as a Hugging Face word-level tokenizer over event names (needs
        `tokenizers`): `tok("NOTE_ON_60 TIME_SHIFT_10").input_ids` are the event ids."""
        from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

        vocab = {event_name(i): i for i in range(NUM_EVENTS)}
        vocab.update({t: self.special_id(t) for t in self.special_tokens})
        hf = Tokenizer(models.WordLevel(vocab))  # no unknown token: a wrong name is an error
        hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        hf.add_special_tokens([AddedToken(t, special=True) for t in self.special_tokens])
        return hf

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        extra = self.special_tokens[len(BUILTIN_SPECIALS) :]
        meta = {"kind": self.kind, "events": NUM_EVENTS, "special_tokens": extra}
        (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> PerformanceTokenizer:
        meta = read_tokenizer_meta(directory)
        if meta.get("events") != NUM_EVENTS:
            raise CheckpointError(
                f"{directory}: the tokenizer has {meta.get('events')} events; "
                f"the performance vocabulary has {NUM_EVENTS}"
            )
        return cls(meta.get("special_tokens", []))
