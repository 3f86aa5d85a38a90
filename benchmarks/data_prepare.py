"""`seqgen data prepare` at scale: throughput on one process and on all, peak memory of the
whole process tree at corpus size S and 2S, the SentencePiece encode ceiling, and training
from the shards against the in-memory path it replaces, side by side in one run.

    python -m benchmarks.data_prepare --data ../shared/data --size_mb 300 \
        --report runs/bench/data_prepare.json

The corpus is synthetic and deterministic: every line of the text files under --data,
shuffled with a fixed seed (again for each pass), written into many files of about 12 MB
until S; 2S is S and as many files again. Every command runs as a child process, alone,
whose memory (PSS, the pages shared by forked workers counted once) is read from /proc.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.common import parse_args, print_figures, write_report

FILE_BYTES = 12 << 20
VAL_FRACTION = 0.01  # the validation after each training run reads all of it
TEXT_SUFFIXES = (".txt", ".tokens", ".en", ".de", ".jsonl")
TRAIN_MODEL = [
    "--model.n_layer",
    "4",
    "--model.n_head",
    "4",
    "--model.n_embd",
    "256",
    "--model.block_size",
    "256",
    "--train.batch_size",
    "16",
    "--train.precision",
    "32-true",
    "--train.val_batches",
    "2",
    "--train.val_every_n_steps",
    "1000",
    "--train.checkpoint_every_n_steps",
    "1000",
    "--train.progress_every_seconds",
    "1000",
]


def corpus_lines(data: Path) -> list[str]:
    """Every line of the text under `data` (JSONL rows as their text fields), in a fixed order."""
    lines: list[str] = []
    for path in sorted(p for p in data.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if path.suffix == ".jsonl":
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                line = " ".join(str(v) for v in row.values() if isinstance(v, str))
            if line.strip():
                lines.append(line)
    if not lines:
        raise SystemExit(f"{data}: no text files ({', '.join(TEXT_SUFFIXES)})")
    return lines


def write_corpus(lines: list[str], folder: Path, size: int, first: int = 0) -> int:
    """Files part-NNNN.txt from index `first` on, of shuffled lines, until `size` bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(first)
    written, index = 0, first
    pool: list[str] = []
    while written < size:
        parts, length = [], 0
        while length < min(FILE_BYTES, size - written):
            if not pool:
                pool = lines[:]
                rng.shuffle(pool)
            line = pool.pop() + "\n"
            parts.append(line)
            length += len(line.encode())
        (folder / f"part-{index:04d}.txt").write_text("".join(parts))
        written, index = written + length, index + 1
    return index


def tree_pss(root: int) -> int:
    """Proportional set size of `root` and all its descendants, in bytes."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def run(
    argv: Sequence[str], until: str | None = None, cache: Path | None = None
) -> dict[str, float]:
    """Run `seqgen ARGV` as a child (with its caches under `cache`, if given): its seconds
    (to the first stderr line holding `until`, then it is stopped, or to its end) and the
    peak PSS of its process tree."""
    env = {**os.environ, "SEQGEN_LOG": "INFO", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    if cache is not None:
        env["SEQGEN_CACHE"] = str(cache)
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "seqgen.cli", *argv],
        env=env,
        text=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    peak, done = 0, threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_pss(child.pid))
            done.wait(0.25)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    seconds, tail = None, []
    for line in child.stderr:
        tail = (tail + [line])[-20:]
        if until and until in line and seconds is None:
            seconds = time.perf_counter() - started
            child.kill()  # SIGTERM would end training gracefully: validation, a checkpoint
    child.wait()
    done.set()
    watcher.join()
    if (until and seconds is None) or child.returncode not in (0, -9):
        raise SystemExit(f"seqgen {' '.join(argv)} failed:\n{''.join(tail)}")
    seconds = seconds if seconds is not None else time.perf_counter() - started
    return {"seconds": seconds, "peak_pss_bytes": peak}


def encode_ceiling(corpus: Path, tokenizer: Path) -> dict[str, float]:
    """SentencePiece's own encode, one thread, over the texts prepare encodes (the same
    units and sections): tokens per second of encoding alone."""
    import sentencepiece as spm

    from seqgen_tasks.text.corpus import TextData
    from seqgen_tasks.text.units import plan, unit_documents

    processor = spm.SentencePieceProcessor(model_file=str(tokenizer / "tokenizer.model"))
    config, units, _ = plan(TextData(source=str(corpus)))
    tokens, seconds = 0, 0.0
    for unit in units:
        for _, text, _ in unit_documents(config, unit):
            started = time.perf_counter()
            tokens += len(processor.encode(text))
            seconds += time.perf_counter() - started
    return {"tokens": tokens, "tokens_per_second": tokens / seconds}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data", help="Folder of text to sample.")
    parser.add_argument("--size_mb", type=float, default=300, help="Corpus size S in MB.")
    parser.add_argument(
        "--num_proc", type=int, default=os.cpu_count(), help="Processes of the parallel runs."
    )
    parser.add_argument(
        "--train_steps", type=int, default=40, help="Steps of the two training runs compared."
    )
    parser.add_argument("--vocab_size", type=int, default=8192, help="Tokenizer vocabulary.")
    parser.add_argument("--work_dir", default=None, help="Where the corpora go (a temp dir).")
    parser.add_argument("--report", default=None, help="Write the JSON report here.")
    parser.add_argument("overrides", nargs="*", help="training overrides, after --")
    args = parse_args(parser, argv)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="seqgen-prepare-"))
    size = int(args.size_mb * 1e6)
    lines = corpus_lines(Path(args.data))
    small, large = work / "corpus_S", work / "corpus_2S"
    files = write_corpus(lines, small, size)
    large.mkdir(parents=True, exist_ok=True)
    for file in small.iterdir():
        target = large / file.name
        if not target.exists():
            target.symlink_to(file.resolve())
    write_corpus(lines, large, size, first=files)
    corpus_bytes = sum(f.stat().st_size for f in small.iterdir())
    tokenizer = work / "tokenizer"
    run(
        [
            "tokenizer",
            "train",
            "--data.source",
            str(small),
            "--out",
            str(tokenizer),
            "--tokenizer.vocab_size",
            str(args.vocab_size),
            "--tokenizer.max_sentences",
            "200000",
        ]
    )

    def prepare(source: Path, out: str, num_proc: int) -> dict[str, float]:
        return run(
            [
                "data",
                "prepare",
                "--data.source",
                str(source),
                "--tokenizer.path",
                str(tokenizer),
                "--out",
                str(work / out),
                "--num_proc",
                str(num_proc),
                "--data.val_fraction",
                str(VAL_FRACTION),
                "--overwrite",
                "true",
            ]
        )

    one = prepare(small, "shards_one", 1)
    many = prepare(small, "shards_S", args.num_proc)
    double = prepare(large, "shards_2S", args.num_proc)
    index = json.loads((work / "shards_S" / "index.json").read_text())
    tokens = sum(index["splits"][s]["tokens"] for s in ("train", "val"))
    ceiling = encode_ceiling(small, tokenizer)
    train = [
        "pretrain",
        *TRAIN_MODEL,
        "--train.max_steps",
        str(args.train_steps),
        *args.overrides,
        "--overwrite",
        "true",
    ]
    sources = {
        "shards": ["--data.source", str(work / "shards_S")],
        "in_memory": [
            "--data.source",
            str(small),
            "--tokenizer.path",
            str(tokenizer),
            "--data.val_fraction",
            str(VAL_FRACTION),
        ],
    }
    first_step, speed = {}, {}
    for name, source in sources.items():  # the in-memory path tokenizes into its cache here
        first_step[name] = run(
            [*train, *source, "--out_dir", str(work / f"run_{name}")],
            until="step 1",
            cache=work / "cache",
        )
    for name, source in sources.items():
        out = work / f"report_{name}.json"
        run(
            [*train, *source, "--out_dir", str(work / f"run_{name}"), "--report", str(out)],
            cache=work / "cache",
        )
        speed[name] = json.loads(out.read_text())["tokens_per_second"]
    report = {
        "corpus_bytes": corpus_bytes,
        "corpus_tokens": tokens,
        "num_proc": args.num_proc,
        "tokens_per_second_one_process": tokens / one["seconds"],
        "tokens_per_second": tokens / many["seconds"],
        "bytes_per_second": corpus_bytes / many["seconds"],
        "parallel_speedup": one["seconds"] / many["seconds"],
        "encode_ceiling_tokens_per_second": ceiling["tokens_per_second"],
        "one_process_fraction_of_ceiling": tokens / one["seconds"] / ceiling["tokens_per_second"],
        "peak_rss_bytes": many["peak_pss_bytes"],
        "peak_rss_bytes_2S": double["peak_pss_bytes"],
        "peak_rss_bytes_one_process": one["peak_pss_bytes"],
        "peak_rss_growth": double["peak_pss_bytes"] / many["peak_pss_bytes"],
        "seconds_to_first_step_from_shards": first_step["shards"]["seconds"],
        "peak_rss_bytes_to_first_step_from_shards": first_step["shards"]["peak_pss_bytes"],
        "old_path_seconds_to_first_step": first_step["in_memory"]["seconds"],
        "old_path_peak_rss_bytes": first_step["in_memory"]["peak_pss_bytes"],
        "training_tokens_per_second_shards": speed["shards"],
        "training_tokens_per_second_in_memory": speed["in_memory"],
        "training_speed_ratio": speed["shards"] / speed["in_memory"],
    }
    report = write_report(args.report, report)
    print_figures(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
