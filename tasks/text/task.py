"""Text language modelling: documents separated by eos, sampled from a text prompt.

Training goes through `seqgen pretrain` (packed documents), so this task has no
fine-tuning data of its own.
"""

from __future__ import annotations

from typing import Any

from seqgen.tokenizer import Tokenizer


class TextTask:
    name = "text"
    data_config = None
    lm_weight = 0.0
    data_builders: dict = {}
    continues_prompt = True
    generation_defaults = {"temperature": 0.8, "max_new_tokens": 200}

    def special_tokens(self, data: Any) -> list[str]:
        return []

    def options(self, data: Any) -> dict[str, Any]:
        return {}

    def configure(self, options: dict[str, Any], block_size: int) -> None:
        pass

    def prompt(self, source: str, tokenizer: Tokenizer) -> list[int]:
        # Pretraining separates documents with eos, so eos is "the start of a document".
        return [tokenizer.eos_id, *tokenizer.encode(source)]

    def decode(self, ids: list[int], tokenizer: Tokenizer) -> str:
        return tokenizer.decode(ids)

    def evaluate(self, argv: list[str]) -> dict[str, Any]:
        from seqgen_tasks.text.evaluate import main

        return main(argv)
