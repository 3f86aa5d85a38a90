"""`seqgen evaluate --task text`: a language model's negative log-likelihood per token and
bits per byte on held-out text (every token scored once, in non-overlapping windows)."""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import torch

from seqgen.errors import DataError
from seqgen.evaluation import stream_nll, write_json
from seqgen_tasks.text.corpus import TextData, read_documents, tokenize_documents


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="seqgen evaluate --task text",
        description="Negative log-likelihood and bits per byte of a checkpoint on a text.",
    )
    parser.add_argument("--task", default="text", help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", required=True, help="Checkpoint or run directory.")
    parser.add_argument("--data", required=True,
                        help="A .txt/.jsonl file, a directory of them, or a dataset.")  # fmt: skip
    parser.add_argument("--text-field", default="text", help="Field of .jsonl rows/datasets.")
    parser.add_argument("--split", default="test", help="Dataset split (not for files).")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--precision", choices=["32", "bf16"], default="32")
    parser.add_argument("--report", help="Write the scores as JSON here.")
    args = parser.parse_args(argv)
    from seqgen.inference import load

    generator = load(args.ckpt, task="text", precision=args.precision)
    model, tokenizer = generator.model, generator.tokenizer
    docs, _ = read_documents(args.data, TextData(text_field=args.text_field), args.split)
    ids = tokenize_documents(docs, tokenizer)
    if len(ids) < 2:
        raise DataError(f"{args.data}: fewer than 2 tokens to score")
    started = time.perf_counter()
    targets, nll = stream_nll(model, ids, tokenizer.pad_id, args.batch_size)
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
    write_json(args.report, report)
    print("| metric | value |\n|---|---|")
    for key in ("nll_per_token", "perplexity", "bits_per_byte"):
        print(f"| {key} | {report[key]:.4f} |")
    print(f"\n{report['tokens']:,} tokens, {report['bytes']:,} bytes of {args.data}")
    return report
