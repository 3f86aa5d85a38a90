"""Text language modelling: documents separated by eos, sampled from a text prompt."""

from __future__ import annotations

from seqgen.tokenizer import Tokenizer


class TextLMTask:
    name = "text"
    special_tokens: tuple[str, ...] = ()

    def prompt(self, source: str, tokenizer: Tokenizer) -> list[int]:
        # Pretraining separates documents with eos, so eos is "the start of a document".
        return [tokenizer.eos_id, *tokenizer.encode(source)]

    def decode(self, ids: list[int], tokenizer: Tokenizer) -> str:
        return tokenizer.decode(ids)
