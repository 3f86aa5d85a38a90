"""How token shards are stored: seqgen's memory-mapped shards against litdata's chunks
(`optimize` with a `TokensLoader`, read by `StreamingDataset`), on one corpus and one
tokenizer, side by side in one run: the time to write them on every core, their size, and
random training windows read per second.

    pip install litdata   # in a separate environment: it pulls a CUDA build of torch
    python -m benchmarks.shard_storage --corpus DIR --tokenizer TOK --report runs/bench/storage.json

DIR is a folder of text files, TOK a tokenizer folder (benchmarks.data_prepare leaves both in
its --work_dir: corpus_S and tokenizer).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from benchmarks.common import parse_args, print_figures, write_report

_tokenizer = None  # each litdata worker's


def litdata_tokens(path: str, tokenizer_dir: str) -> Iterator:
    """litdata's `fn`: one file's ids, a tensor per 4 MiB unit (as seqgen reads it), with eos
    at the end of the file (one document)."""
    import torch

    from seqgen.tokenizer import load_tokenizer
    from seqgen_tasks.text.corpus import encode_document

    global _tokenizer
    if _tokenizer is None:
        _tokenizer = load_tokenizer(tokenizer_dir)
    text = Path(path).read_text()
    ids = [i for piece in encode_document(text, _tokenizer) for i in piece] + [_tokenizer.eos_id]
    yield torch.tensor(np.asarray(ids, dtype=np.int32))


def window_reads(read, count: int, size: int, block: int, seed: int = 0) -> float:
    """Random windows of `block` + 1 ids read per second (`read(offset)`)."""
    offsets = np.random.default_rng(seed).integers(0, size - block - 1, count)
    started = time.perf_counter()
    for offset in offsets:
        read(int(offset))
    return count / (time.perf_counter() - started)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", required=True, help="A folder of text files.")
    parser.add_argument("--tokenizer", required=True, help="A tokenizer folder.")
    parser.add_argument("--num_proc", type=int, default=os.cpu_count(), help="Processes.")
    parser.add_argument("--block_size", type=int, default=1024, help="Window length.")
    parser.add_argument("--windows", type=int, default=20_000, help="Random windows read.")
    parser.add_argument("--work_dir", default=None, help="Where the shards go (a temp dir).")
    parser.add_argument("--report", default=None, help="Write the JSON report here.")
    args = parse_args(parser, argv)
    try:
        import litdata
    except ImportError:
        raise SystemExit("this comparison needs litdata: pip install litdata") from None
    from seqgen.shards import split_tokens
    from seqgen.tokenizer import TokenizerConfig
    from seqgen_tasks.text.corpus import TextData
    from seqgen_tasks.text.prepare import PrepareConfig, prepare

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="seqgen-storage-"))
    files = sorted(str(p) for p in Path(args.corpus).iterdir() if p.is_file())
    ours, theirs = work / "seqgen", work / "litdata"
    shutil.rmtree(ours, ignore_errors=True)
    shutil.rmtree(theirs, ignore_errors=True)
    started = time.perf_counter()
    prepare(
        PrepareConfig(
            out=str(ours),
            num_proc=args.num_proc,
            data=TextData(source=args.corpus, val_fraction=0.01),
            tokenizer=TokenizerConfig(path=args.tokenizer),
        )
    )
    our_seconds = time.perf_counter() - started
    from functools import partial

    started = time.perf_counter()
    litdata.optimize(
        fn=partial(litdata_tokens, tokenizer_dir=args.tokenizer),
        inputs=files,
        output_dir=str(theirs),
        chunk_bytes="64MB",
        num_workers=args.num_proc,
        item_loader=litdata.TokensLoader(),
    )
    their_seconds = time.perf_counter() - started
    tokens = split_tokens(ours, "train")
    size = len(tokens)
    block = args.block_size
    our_reads = window_reads(lambda i: tokens[i : i + block + 1], args.windows, size, block)
    dataset = litdata.StreamingDataset(str(theirs), item_loader=litdata.TokensLoader(block + 1))
    their_reads = window_reads(
        lambda i: dataset[i % len(dataset)], args.windows, len(dataset) * (block + 1), block
    )

    def folder_bytes(path: Path) -> int:
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())

    report = write_report(
        args.report,
        {
            "corpus_bytes": sum(os.path.getsize(f) for f in files),
            "num_proc": args.num_proc,
            "seqgen_prepare_seconds": our_seconds,
            "litdata_optimize_seconds": their_seconds,
            "seqgen_bytes": folder_bytes(ours),
            "litdata_bytes": folder_bytes(theirs),
            "seqgen_windows_per_second": our_reads,
            "litdata_windows_per_second": their_reads,
            "litdata_version": litdata.__version__,
        },
    )
    print_figures(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
