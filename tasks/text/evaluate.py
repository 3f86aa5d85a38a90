"""`seqgen evaluate --task text`: a language model's negative log-likelihood per token and
bits per byte on held-out text (every token scored once, in non-overlapping windows)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from seqgen.errors import DataError
from seqgen.evaluation import EvalConfig, stream_nll, write_json
from seqgen.tables import markdown_table
from seqgen_tasks.text.corpus import TextData, read_documents, tokenize_documents


@dataclass(kw_only=True)
class TextEval(EvalConfig):
    """Negative log-likelihood and bits per byte of a checkpoint on held-out text."""

    data: str
    """A .txt/.jsonl file, a directory of them, a `save_to_disk` folder or a dataset."""
    text_field: str = "text"
    """Field of .jsonl rows and dataset records."""
    split: str = "test"
    """Dataset split (not for files)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.ckpt:
            raise ValueError("give ckpt: the language model to score")


def evaluate(config: TextEval) -> dict[str, Any]:
    from seqgen.inference import load

    generator = load(config.ckpt, task="text", **config.load_options())
    model, tokenizer = generator.model, generator.tokenizer
    docs, _ = read_documents(config.data, TextData(text_field=config.text_field), config.split)
    ids = tokenize_documents(docs, tokenizer)
    if len(ids) < 2:
        raise DataError(f"{config.data}: fewer than 2 tokens to score")
    started = time.perf_counter()
    targets, nll = stream_nll(model, ids, tokenizer.pad_id, config.batch_size)
    token_bytes = torch.tensor(tokenizer.token_byte_lengths(), dtype=torch.float64)
    nats, tokens = nll.sum().item(), len(targets)
    num_bytes = token_bytes[targets].sum().item()
    report = {
        "nll_per_token": nats / tokens,
        "perplexity": math.exp(nats / tokens),
        "bits_per_byte": nats / num_bytes / math.log(2) if num_bytes else math.nan,
        "tokens": int(tokens),
        "bytes": int(num_bytes),
        "seconds": time.perf_counter() - started,
        "checkpoint": str(generator.path),
    }
    write_json(config.report, report)
    shown = ("nll_per_token", "perplexity", "bits_per_byte")
    print(markdown_table(["metric", "value"], [(key, report[key]) for key in shown]))
    print(f"\n{report['tokens']:,} tokens, {report['bytes']:,} bytes of {config.data}")
    return report
