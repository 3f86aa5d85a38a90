"""WikiSum-style summarization on WikiText-2 articles: pretrain a language model on the
training articles' text, fine-tune it to write the lead from the body, and score ROUGE on
valid; then the same fine-tuning budget from scratch, and the first-100-words baseline.

    python -m benchmarks.summarization_wikisum --data ../shared/data/wikisum_wt2 \
        --budget_seconds 3600 --report runs/bench/sum.json --out runs/bench/sum

The budget is training time in all for the pretrained run (pretraining + fine-tuning); the
scratch run fine-tunes for the same time as the pretrained run does. By default 95% of the
budget pretrains: the pretrained model needs few fine-tuning steps (over a 3-min, ~150-step
schedule its dev loss falls to the last step; over 6 min it bottoms out at step 50 and
rises after). Both fine-tunings are validated on a dev set held out of train (never valid)
and their last step is scored (`best_step` is reported, not scored). Besides each system's
own interval, the report gives the pretrained-minus-scratch difference with a paired
bootstrap interval (the same resampled documents for both).
ROUGE ignores WikiText's `<unk>`, which would otherwise match itself across different words.
Tokenizer training, encoding and evaluation run outside the budget. Extra arguments after
`--` override the fine-tuning recipe. Decoding defaults to minimum Bayes risk over 16
samples (temperature 0.7, top-p 0.9, 4-gram ban, at least 256 new tokens), chosen on the
dev set, where it scored best for the scratch model and near best for the pretrained one;
`--mbr_samples 1 --temperature 0 --num_beams 4 --no_repeat_ngram_size 3` decodes by beam search.
`--rescore DIR` scores a kept run (an earlier `--out`) again with other decoding settings,
without training:

    python -m benchmarks.summarization_wikisum --data ../shared/data/wikisum_wt2 \
        --rescore runs/bench/sum --out runs/bench/sum_beam --mbr_samples 1 --temperature 0 \
        --num_beams 4 --no_repeat_ngram_size 3
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.common import RECIPES, evaluate, parse_args, train, write_report
from seqgen.evaluation import write_json
from seqgen.tables import markdown_table

BASELINE_WORDS = 100
REPORTED = ("rouge1", "rouge2", "rougeLsum")
DECODING = (
    "num_beams",
    "min_new_tokens",
    "length_penalty",
    "no_repeat_ngram_size",
    "temperature",
    "top_p",
    "mbr_samples",
    "batch_size",
)  # flags passed to evaluation
# WikiText writes every rare word as <unk>: a placeholder, not a word, so it never scores
IGNORED = ("<unk>",)


def run(command: str, argv: list[str], report: Path) -> dict:
    """Train, keeping the report beside the run (`--rescore` reads it back)."""
    result = train(command, argv)
    write_json(report, result)
    return result


def split_train(data: Path, work: Path, dev_articles: int) -> tuple[Path, Path, Path]:
    """Training articles for pretraining text (title, lead, body: one document each) and
    fine-tuning, and a dev set drawn from train that neither sees: the fine-tuning runs
    validate on it, so valid stays unseen until the final scores."""
    lines = [line for line in (data / "train.jsonl").read_text().splitlines() if line]
    if not 0 < dev_articles < len(lines):
        raise SystemExit(f"--dev_articles must be in [1, {len(lines) - 1}], got {dev_articles}")
    chosen = set(random.Random(0).sample(range(len(lines)), dev_articles))
    train = [line for i, line in enumerate(lines) if i not in chosen]
    paths = work / "articles.jsonl", work / "train.jsonl", work / "dev.jsonl"
    rows = [json.loads(line) for line in train]
    paths[0].write_text(
        "".join(
            json.dumps({"text": f"{r['title']}\n{r['lead']}\n{r['body']}"}) + "\n" for r in rows
        )
    )
    paths[1].write_text("\n".join(train) + "\n")
    paths[2].write_text("\n".join(lines[i] for i in sorted(chosen)) + "\n")
    return paths


def train_all(args: argparse.Namespace, work: Path) -> tuple[dict, dict]:
    """Pretrain, then fine-tune from the pretrained model and from scratch; the reports."""
    articles, train, dev = split_train(Path(args.data), work, args.dev_articles)
    pre = run(
        "pretrain",
        [
            "--config",
            args.pretrain_config,
            "--data.source",
            str(articles),
            "--data.val_fraction",
            "0.05",
            "--train.max_steps=-1",
            f"--train.max_time={args.budget_seconds * args.pretrain_fraction}",
            "--train.progress_bar=false",
            "--out_dir",
            str(work / "pretrain"),
        ],
        work / "pretrain.json",
    )
    # What pretraining left; its planned share at least, where it ran over (a step or the
    # last validation past its limit, or a loaded machine), so fine-tuning always runs.
    finetune_seconds = max(
        args.budget_seconds - pre["train_seconds"],
        args.budget_seconds * (1 - args.pretrain_fraction),
    )
    common = [
        "--config",
        args.config,
        "--data.train",
        str(train),
        "--data.val",
        str(dev),
        "--train.max_steps=-1",
        "--train.keep_best=true",
        "--train.val_every_n_steps=50",
        f"--train.max_time={finetune_seconds}",
        "--train.progress_bar=false",
    ]
    starts = {"pretrained": pre["checkpoint"], "scratch": "none"}
    runs = {
        name: run(
            "finetune",
            [*common, "--init_from", start, "--out_dir", str(work / name), *args.overrides],
            work / f"{name}.json",
        )
        for name, start in starts.items()
    }
    (work / "pretrained" / "final").rename(work / "final")
    return pre, runs


def kept_runs(work: Path) -> tuple[dict, dict]:
    """The training reports of a run kept with --out, checked to have both final models."""
    needed = [
        work / n
        for n in ("pretrain.json", "pretrained.json", "scratch.json", "final", "scratch/final")
    ]
    missing = [str(path) for path in needed if not path.exists()]
    if missing:
        raise SystemExit(f"--rescore {work}: not a kept run, missing {', '.join(missing)}")
    pre = json.loads((work / "pretrain.json").read_text())
    return pre, {n: json.loads((work / f"{n}.json").read_text()) for n in ("pretrained", "scratch")}


def f1(scores: dict) -> dict:
    return {t: {k: scores[t]["fmeasure"][k] for k in ("mid", "low", "high")} for t in REPORTED}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="folder with train.jsonl and valid.jsonl")
    parser.add_argument("--budget_seconds", type=float, default=3600.0)
    parser.add_argument(
        "--pretrain_fraction",
        type=float,
        default=0.95,
        help="share of the budget spent pretraining",
    )
    parser.add_argument(
        "--dev_articles",
        type=int,
        default=30,
        help="training articles held out as the fine-tunings' dev set",
    )
    parser.add_argument("--num_beams", type=int, default=1)
    parser.add_argument("--min_new_tokens", type=int, default=256)
    parser.add_argument("--length_penalty", type=float, default=1.0)
    parser.add_argument("--no_repeat_ngram_size", type=int, default=4)
    parser.add_argument(
        "--temperature",
        type=float,
        default=0.7,
        help="> 0 samples (--num_beams 1); 0: greedy or beam search",
    )
    parser.add_argument("--top_p", type=float, default=0.9)
    parser.add_argument(
        "--mbr_samples",
        type=int,
        default=16,
        help="minimum Bayes risk over this many samples per document "
        "(1: a single sample, or beam search at temperature 0)",
    )
    parser.add_argument(
        "--batch_size", type=int, default=128, help="documents or samples decoded together"
    )
    parser.add_argument("--seed", type=int, default=0, help="sampling and bootstrap seed")
    parser.add_argument(
        "--rescore",
        metavar="DIR",
        help="score the runs kept in DIR (an earlier --out) without training; "
        "the new predictions go to --out (default DIR)",
    )
    parser.add_argument(
        "--pretrain_config", default=str(RECIPES / "summarization" / "wikitext_pretrain.yaml")
    )
    parser.add_argument("--config", default=str(RECIPES / "summarization" / "wikisum.yaml"))
    parser.add_argument("--report", help="write the results as JSON here")
    parser.add_argument("--out", help="keep the runs here (the pretrained model in OUT/final)")
    parser.add_argument("overrides", nargs="*", help="fine-tuning recipe overrides, after --")
    args = parse_args(parser, argv)
    data = Path(args.data)
    for name in ("train.jsonl", "valid.jsonl"):
        if not (data / name).is_file():
            parser.error(f"{data / name}: no such file")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if args.rescore:
            work = Path(args.rescore)
            pre, runs = kept_runs(work)
        else:
            work = Path(args.out or tmp)
            work.mkdir(parents=True, exist_ok=True)
            pre, runs = train_all(args, work)
        out = Path(args.out or work)
        out.mkdir(parents=True, exist_ok=True)
        scores, compare = {}, None
        # scratch first: the pretrained evaluation then compares itself with scratch's output
        for name, ckpt in (("scratch", work / "scratch" / "final"), ("pretrained", work / "final")):
            scores[name] = evaluate(
                "summarization",
                ckpt=str(ckpt),
                data=str(data / "valid.jsonl"),
                baseline_words=BASELINE_WORDS,
                ignore=list(IGNORED),
                seed=args.seed,
                output=str(out / f"{name}.pred.jsonl"),
                report=str(out / f"{name}.rouge.json"),
                compare=compare,
                **{key: getattr(args, key) for key in DECODING},
            )
            compare = str(out / f"{name}.pred.jsonl")
    difference = scores["pretrained"]["compared"]["difference"]
    report = {
        "pretrained": f1(scores["pretrained"]["system"]["scores"]),
        "scratch": f1(scores["scratch"]["system"]["scores"]),
        "baseline": f1(scores["pretrained"]["baseline"]["scores"]),
        "pretrained_minus_scratch": {t: difference[t] for t in REPORTED},
        "baseline_words": BASELINE_WORDS,
        "rouge_ignores": IGNORED,
        "pretrain_seconds": pre["train_seconds"],
        "finetune_seconds": {name: r["train_seconds"] for name, r in runs.items()},
        "best_step": {name: r["best_step"] for name, r in runs.items()},
        "summary_words": {n: s["system"]["lengths"]["mean_words"] for n, s in scores.items()},
        "decode_seconds": {name: s["decode_seconds"] for name, s in scores.items()},
        "pretrain": pre,
        "finetune": runs,
        "wall_seconds": time.perf_counter() - started,
        "recipes": [args.pretrain_config, args.config],
        "overrides": args.overrides,
        "decoding": {key: getattr(args, key) for key in (*DECODING, "seed")},
        "rescored": args.rescore,
    }
    print(f"\nWikiSum (WikiText-2) valid, {len(scores)} systems + baseline, F1 % [95% CI]")
    rows = [
        (
            name,
            *(f"{v['mid']:.2f} [{v['low']:.2f}, {v['high']:.2f}]" for v in report[name].values()),
        )
        for name in ("pretrained", "scratch", "baseline")
    ]
    rows.append(
        (
            "pretrained - scratch (paired)",
            *(
                f"{v['mean']:+.2f} [{v['low']:+.2f}, {v['high']:+.2f}]"
                for v in report["pretrained_minus_scratch"].values()
            ),
        )
    )
    print(markdown_table(["system", *REPORTED], rows))
    print(
        "decoding: "
        + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in report["decode_seconds"].items())
    )
    write_report(args.report, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
