"""Any Hugging Face tokenizer (`tokenizer.json`) as a seqgen tokenizer kind, `huggingface`:
what `seqgen import --hf` gives a GPT-2 folder. Needs the `tokenizers` package (installed with
`transformers`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import AddedToken
from tokenizers import Tokenizer as HFTokenizerObject

from seqgen.errors import CheckpointError
from seqgen.files import read_json
from seqgen.tokenizer import META_FILE, SP_SPACE, append_new, read_tokenizer_meta

HF_TOKENIZER_FILE = "tokenizer.json"


class HuggingFaceTokenizer:
    """A seqgen tokenizer kind that wraps a Hugging Face `tokenizer.json`: what a checkpoint
    imported from an HF folder without a seqgen tokenizer (e.g. GPT-2's) uses.

    `encode` adds no special tokens (the task adds its own); special tokens that a task
    appends (e.g. translation's delimiter) get the ids after the vocabulary.
    """

    kind = "huggingface"

    def __init__(
        self,
        hf: HFTokenizerObject,
        bos: str,
        eos: str,
        pad: str | None = None,
        special_tokens: Sequence[str] = (),
    ) -> None:
        self.hf = hf
        self.names = {"bos": bos, "eos": eos, "pad": pad or eos}  # GPT-2 has no pad token
        ids = {role: hf.token_to_id(token) for role, token in self.names.items()}
        missing = [f"{role} {self.names[role]!r}" for role, i in ids.items() if i is None]
        if missing:
            raise CheckpointError(f"the Hugging Face tokenizer has no {', '.join(missing)}")
        self.bos_id, self.eos_id, self.pad_id = ids["bos"], ids["eos"], ids["pad"]
        self.special_tokens: list[str] = []
        self.add_special_tokens(special_tokens)

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def add_special_tokens(self, tokens: Sequence[str]) -> list[int]:
        added = append_new(self.special_tokens, tokens)
        self.hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in added])
        return [self.special_id(t) for t in tokens]

    def special_id(self, token: str) -> int:
        known = {"<s>": self.bos_id, "</s>": self.eos_id, "<pad>": self.pad_id}
        if token in known:
            return known[token]
        if token not in self.special_tokens and token not in self.names.values():
            raise KeyError(f"{token!r} is not a special token of this tokenizer")
        return self.hf.token_to_id(token)

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        ids = [int(i) for i in ids]
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary (size {self.vocab_size})")
        return self.hf.decode(ids, skip_special_tokens=skip_special)

    def token_byte_lengths(self) -> list[int]:
        """UTF-8 bytes per id: exact for byte-level BPE (GPT-2) and SentencePiece-style
        vocabularies, else the bytes of each token decoded alone."""
        decoder = json.loads(self.hf.to_str()).get("decoder") or {}
        kinds = {d.get("type") for d in [decoder, *decoder.get("decoders", [])]}
        special = {i for i, t in self.hf.get_added_tokens_decoder().items() if t.special}
        lengths = []
        for i in range(self.vocab_size):
            piece = self.hf.id_to_token(i) or ""
            if i in special:
                lengths.append(0)
            elif "ByteLevel" in kinds:  # every character of a piece stands for one byte
                lengths.append(len(piece))
            elif "ByteFallback" in kinds:
                is_byte = len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">")
                lengths.append(1 if is_byte else len(piece.replace(SP_SPACE, " ").encode()))
            else:
                lengths.append(len(self.hf.decode([i]).encode()))
        return lengths

    def to_hf(self) -> HFTokenizerObject:
        return self.hf

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.hf.save(str(directory / HF_TOKENIZER_FILE))
        meta = {"kind": self.kind, **self.names, "special_tokens": self.special_tokens}
        (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> HuggingFaceTokenizer:
        meta = read_tokenizer_meta(directory)
        hf = read_hf_tokenizer(directory)
        return cls(hf, meta["bos"], meta["eos"], meta.get("pad"), meta.get("special_tokens", []))

    @classmethod
    def from_hf_folder(cls, folder: Path, config: dict[str, Any]) -> HuggingFaceTokenizer:
        """The tokenizer of an HF model folder (its `tokenizer.json`), with bos/eos/pad from
        the model's config.json ids or else tokenizer_config.json."""
        hf = read_hf_tokenizer(folder)
        path = folder / "tokenizer_config.json"
        settings = read_json(path) if path.is_file() else {}
        settings = settings if isinstance(settings, dict) else {}

        def name(role: str) -> str | None:
            token_id = config.get(f"{role}_token_id")
            if isinstance(token_id, int) and hf.id_to_token(token_id) is not None:
                return hf.id_to_token(token_id)
            token = settings.get(f"{role}_token")
            return token.get("content") if isinstance(token, dict) else token

        bos, eos = name("bos"), name("eos")
        if eos is None:
            raise CheckpointError(
                f"{folder}: neither config.json nor tokenizer_config.json names an eos token"
            )
        return cls(hf, bos or eos, eos, name("pad"))


def read_hf_tokenizer(directory: Path) -> HFTokenizerObject:
    path = directory / HF_TOKENIZER_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{path}: missing (a Hugging Face fast tokenizer file; save the "
            "tokenizer with transformers to write it)"
        )
    try:
        return HFTokenizerObject.from_file(str(path))
    except Exception as err:  # the Rust library raises its own exception type
        raise CheckpointError(f"{path}: not a Hugging Face tokenizer ({err})") from None
