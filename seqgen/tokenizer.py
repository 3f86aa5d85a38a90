"""Tokenizers: a small protocol, and a SentencePiece implementation that round-trips any text.

A tokenizer is saved inside every checkpoint as `seqgen_tokenizer.json` (its kind and special
tokens) plus whatever files its kind needs (`tokenizer.model` for SentencePiece). The name is
not Hugging Face's `tokenizer.json`, which is another format; checkpoints written before the
rename, with seqgen's file under that name, still load.
"""

from __future__ import annotations

import io
import json
import logging
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import sentencepiece as spm

from seqgen.errors import CheckpointError, ConfigError, DataError
from seqgen.files import read_json
from seqgen.progress import Progress

log = logging.getLogger("seqgen")
META_FILE = "seqgen_tokenizer.json"
LEGACY_META_FILE = "tokenizer.json"  # seqgen 0.1 checkpoints; now Hugging Face's name
SP_MODEL_FILE = "tokenizer.model"
# SentencePiece writes spaces as this character; a literal one in the text is sent as bytes.
SP_SPACE = "\u2581"
# Pieces of ids 0-3. Id 0 is SentencePiece's unknown piece, which byte fallback never
# produces; its name is not "<unk>", so that a corpus's literal "<unk>" can be a user symbol.
RESERVED_PIECES = ("<reserved-unk>", "<s>", "</s>", "<pad>")


@runtime_checkable
class Tokenizer(Protocol):
    vocab_size: int
    bos_id: int
    eos_id: int
    pad_id: int

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str: ...
    def special_id(self, token: str) -> int: ...
    def add_special_tokens(self, tokens: Sequence[str]) -> list[int]: ...
    def token_byte_lengths(self) -> list[int]: ...
    def save(self, directory: Path) -> None: ...


# A tokenizer kind may also define `to_hf(self) -> tokenizers.Tokenizer`: its Hugging Face
# equivalent, which `seqgen export --format hf` writes so that AutoTokenizer loads the export.


@dataclass
class TokenizerConfig:
    """SentencePiece tokenizer training."""

    vocab_size: int = 2048
    """Vocabulary size, including 4 reserved ids, the user symbols and 256 byte pieces."""
    model_type: Literal["bpe", "unigram", "char"] = "bpe"
    """SentencePiece algorithm."""
    special_tokens: list[str] = field(default_factory=list)
    """Extra special tokens, appended after the trained pieces."""
    max_sentences: int = 2_000_000
    """Lines sampled from the corpus to train on (SentencePiece's input_sentence_size)."""
    split_digits: bool = True
    """Split numbers into single digits."""
    user_symbols: list[str] = field(default_factory=list)
    """Strings always kept as one piece, e.g. WikiText's `<unk>`, which is otherwise spelled
    out byte by byte. They stay ordinary text: encoded where they occur, decoded as written."""
    path: str | None = None
    """Use this trained tokenizer (a checkpoint or tokenizer directory) instead of training one."""

    def __post_init__(self) -> None:
        smallest = 4 + len(self.user_symbols) + 256 + 1
        if self.vocab_size < smallest and self.model_type != "char":
            raise ConfigError(
                f"tokenizer.vocab_size must be at least {smallest} (4 reserved + "
                f"{len(self.user_symbols)} user symbols + 256 bytes + 1), got {self.vocab_size}"
            )
        for symbol in self.user_symbols:
            if not isinstance(symbol, str) or not symbol or SP_SPACE in symbol:
                raise ConfigError(
                    f"tokenizer.user_symbols: {symbol!r} must be a non-empty string without U+2581"
                )
            if symbol in RESERVED_PIECES:
                raise ConfigError(
                    f"tokenizer.user_symbols: {symbol!r} is reserved ({', '.join(RESERVED_PIECES)})"
                )
        if len(set(self.user_symbols)) != len(self.user_symbols):
            raise ConfigError("tokenizer.user_symbols has duplicates")


class SentencePieceTokenizer:
    """SentencePiece with byte fallback: every UTF-8 string encodes, and decodes back exactly.

    Ids: 0 unknown (never produced), 1 <s> (bos), 2 </s> (eos), 3 <pad>, then the user symbols,
    256 byte pieces and the learned pieces; special tokens added later get the ids after
    those, never renumbering.
    """

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes, special_tokens: Sequence[str] = ()) -> None:
        self.model_proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.bos_id, self.eos_id, self.pad_id = self.sp.bos_id(), self.sp.eos_id(), self.sp.pad_id()
        self._space_bytes = [self.sp.piece_to_id(f"<0x{b:02X}>") for b in SP_SPACE.encode()]
        self.special_tokens: list[str] = []
        self._piece_bytes = [self._sp_piece_bytes(i) for i in range(self.sp.vocab_size())]
        self.add_special_tokens(special_tokens)

    def _sp_piece_bytes(self, i: int) -> bytes:
        if self.sp.is_byte(i):
            return bytes([int(self.sp.id_to_piece(i)[3:5], 16)])
        if self.sp.is_control(i) or self.sp.is_unknown(i):
            return b""
        return self.sp.id_to_piece(i).replace(SP_SPACE, " ").encode()

    @property
    def vocab_size(self) -> int:
        return len(self._piece_bytes)

    def add_special_tokens(self, tokens: Sequence[str]) -> list[int]:
        """Append special tokens not present yet; returns the ids of all `tokens`."""
        self._piece_bytes += [b""] * len(append_new(self.special_tokens, tokens))
        return [self.special_id(t) for t in tokens]

    def special_id(self, token: str) -> int:
        builtin = {"<s>": self.bos_id, "</s>": self.eos_id, "<pad>": self.pad_id}
        if token in builtin:
            return builtin[token]
        if token not in self.special_tokens:
            raise KeyError(f"{token!r} is not a special token of this tokenizer")
        return self.sp.vocab_size() + self.special_tokens.index(token)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special-token strings in the text are encoded as plain text."""
        ids: list[int] = []
        for n, part in enumerate(text.split(SP_SPACE)):
            if n:
                ids.extend(self._space_bytes)
            if part:
                ids.extend(self.sp.encode(part))
        return ids

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """Text of `ids`; invalid UTF-8 byte runs (from sampling) become U+FFFD."""
        out = bytearray()
        first_special = self.sp.vocab_size()
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary (size {self.vocab_size})")
            if not skip_special:
                if i >= first_special:
                    out += self.special_tokens[i - first_special].encode()
                elif self.sp.is_control(i):
                    out += self.sp.id_to_piece(i).encode()
            out += self._piece_bytes[i]
        return out.decode("utf-8", errors="replace")

    def token_byte_lengths(self) -> list[int]:
        """UTF-8 bytes each id stands for (0 for specials): sums to len(decode(ids).encode())."""
        return [len(b) for b in self._piece_bytes]

    def to_hf(self):
        """The same tokenizer as a Hugging Face `tokenizers.Tokenizer` (needs `tokenizers`)."""
        from seqgen.interop.sentencepiece_hf import sentencepiece_to_hf

        builtin = [self.sp.id_to_piece(i) for i in (self.bos_id, self.eos_id, self.pad_id)]
        return sentencepiece_to_hf(
            self.model_proto,
            space=SP_SPACE,
            unk=RESERVED_PIECES[0],
            builtin=[RESERVED_PIECES[0], *builtin],
            appended={token: self.special_id(token) for token in self.special_tokens},
        )

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / SP_MODEL_FILE).write_bytes(self.model_proto)
        meta = {"kind": self.kind, "special_tokens": self.special_tokens}
        (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> SentencePieceTokenizer:
        meta = read_tokenizer_meta(directory)
        model_path = directory / SP_MODEL_FILE
        if not model_path.is_file():
            raise CheckpointError(f"{model_path}: missing SentencePiece model")
        try:
            return cls(model_path.read_bytes(), meta.get("special_tokens", []))
        except RuntimeError as err:
            raise CheckpointError(f"{model_path}: not a valid SentencePiece model ({err})") from err

    @classmethod
    def train(cls, texts: Iterable[str], config: TokenizerConfig) -> SentencePieceTokenizer:
        """Train on an iterable of documents (each split into lines for SentencePiece)."""
        model = io.BytesIO()
        counter = _CountingLines(texts)
        started = time.monotonic()
        log.info(
            "training a %s tokenizer of %s pieces (SentencePiece) on the training text",
            config.model_type,
            f"{config.vocab_size:,}",
        )
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(counter),
                model_writer=model,
                vocab_size=config.vocab_size,
                model_type=config.model_type,
                byte_fallback=True,
                character_coverage=0.9995,
                # identity normalisation and no added/removed spaces: decode(encode(t)) == t
                normalization_rule_name="identity",
                add_dummy_prefix=False,
                remove_extra_whitespaces=False,
                allow_whitespace_only_pieces=True,
                split_digits=config.split_digits,
                input_sentence_size=config.max_sentences,
                shuffle_input_sentence=True,
                max_sentence_length=1 << 14,
                user_defined_symbols=config.user_symbols,
                unk_piece=RESERVED_PIECES[0],
                unk_id=0,
                bos_id=1,
                eos_id=2,
                pad_id=3,
                minloglevel=2,
                num_threads=2,
            )
        except RuntimeError as err:
            if counter.lines == 0:
                raise DataError("cannot train a tokenizer on an empty corpus") from err
            needed = re.search(r"required_chars\. \d+ vs (\d+)", str(err))
            hint = (
                f"raise tokenizer.vocab_size to at least {needed.group(1)} (the corpus has "
                "that many distinct characters and reserved pieces)"
                if needed
                else "lower tokenizer.vocab_size or add text"
            )
            raise DataError(
                f"SentencePiece could not train a {config.vocab_size}-piece vocabulary on "
                f"{counter.lines} lines: {hint} ({str(err).splitlines()[0]})"
            ) from None
        log.info(
            "trained the tokenizer on %s lines in %.1f s",
            f"{counter.lines:,}",
            time.monotonic() - started,
        )
        return cls(model.getvalue(), config.special_tokens)


class _CountingLines:
    """Yields the non-empty lines of the documents and counts them, for error messages and
    progress (SentencePiece reads them all, then trains without reporting)."""

    def __init__(self, texts: Iterable[str]) -> None:
        self.texts = texts
        self.lines = 0

    def __iter__(self) -> Iterator[str]:
        progress = Progress("read", unit="lines for the tokenizer")
        for text in self.texts:
            for line in re.split(r"\r?\n", text):
                if line.strip():
                    self.lines += 1
                    progress()
                    yield line
        progress.finish()


def append_new(special_tokens: list[str], tokens: Sequence[str]) -> list[str]:
    """Append the tokens not in `special_tokens` yet, in order; returns those appended."""
    added = []
    for token in tokens:
        if not token:
            raise ConfigError("a special token must be a non-empty string")
        if token not in special_tokens:
            special_tokens.append(token)
            added.append(token)
    return added


TOKENIZER_GROUP = "seqgen.tokenizers"  # entry points: kind name -> tokenizer class


def tokenizer_class(kind: str, where: Path) -> type:
    """The class of a tokenizer kind: the core's SentencePiece, or a `seqgen.tokenizers` entry
    point (only that kind's module is imported, so a broken package breaks only its own)."""
    if kind == SentencePieceTokenizer.kind:
        return SentencePieceTokenizer
    found = {ep.name: ep for ep in entry_points(group=TOKENIZER_GROUP)}
    if kind not in found:
        known = ", ".join(sorted({SentencePieceTokenizer.kind, *found}))
        raise CheckpointError(
            f"{where}: unknown tokenizer kind {kind!r} (known: {known}); is "
            "the package that defines it installed?"
        )
    try:
        return found[kind].load()
    except Exception as err:  # a third party's import error, whatever its type
        raise CheckpointError(
            f"{where}: tokenizer kind {kind!r} ({found[kind].value}) failed "
            f"to load: {type(err).__name__}: {err}"
        ) from err


def read_tokenizer_meta(directory: Path) -> dict:
    """The tokenizer metadata of a checkpoint or tokenizer directory (its `kind` and what that
    kind stores), from `seqgen_tokenizer.json` or a seqgen 0.1 `tokenizer.json`."""
    path = directory / META_FILE
    if not path.is_file():
        path = directory / LEGACY_META_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{directory / META_FILE}: missing (not a seqgen checkpoint or tokenizer directory)"
        )
    meta = read_json(path, "tokenizer metadata")
    if isinstance(meta, dict) and "kind" not in meta and "model" in meta:
        raise CheckpointError(
            f"{path} is a Hugging Face tokenizer, not seqgen's; convert the "
            "folder with `seqgen import --hf DIR --out CKPT`"
        )
    if not isinstance(meta, dict) or "kind" not in meta:
        raise CheckpointError(f"{path}: corrupt tokenizer metadata (no 'kind')")
    return meta


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Load the tokenizer saved in a checkpoint or tokenizer directory."""
    directory = Path(directory)
    kind = read_tokenizer_meta(directory)["kind"]
    return tokenizer_class(kind, directory / META_FILE).load(directory)
