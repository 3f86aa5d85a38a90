"""How alike are two held-out splits of a corpus, by chance alone? Pieces drawn at random
(disjoint draws of `--sizes` pieces against `--against` pieces, from the corpus's pieces
that can never be test), compared by the statistics continuations are scored with: the
overlap of their note-duration histograms and the mean overlap of all six, the gap between
their median note lengths and between their shares of time with more than 10 notes
sounding. Where a dev split and a test split disagree by no more than such draws do, the
disagreement is the pieces', and no choice of dev made without looking at test removes it.
The one figure that reads test is that: how the dev pieces the music task carves differ
from its test pieces (`--test`, or those it carves out of `--data`).

    python -m benchmarks.music_splits --data data/asap/train --test data/asap/valid --sizes 20 40 80
    python -m benchmarks.music_splits --data data/pop909 --sizes 44 --against 48
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Collection, Sequence

import numpy as np

from benchmarks.common import parse_args, write_report
from seqgen.tables import markdown_table
from seqgen_tasks.music.data import load_corpus
from seqgen_tasks.music.events import STEPS_PER_SECOND
from seqgen_tasks.music.splits import HELD_OUT, assign
from seqgen_tasks.music.statistics import (
    CROWDED_NOTES,
    histogram_overlap,
    histogram_table,
    sounding,
)

LONGEST = 60 * STEPS_PER_SECOND  # note lengths counted in 10 ms steps up to a minute
QUANTILES = (0.05, 0.5, 0.95)  # overlaps read low, gaps high


def piece_table(source: str, held: Collection[str]) -> tuple[dict[str, dict], dict[str, str]]:
    """Each piece's statistics, summed over its performances (histogram counts, a count of
    each note length in 10 ms steps, its crowded and total 10 ms steps), and the split the
    music task puts it in when it carves the splits in `held` out of `source`."""
    performances, report = load_corpus(source, "train")
    by_piece = defaultdict(list)
    for notes, piece in zip(performances, report["pieces"], strict=True):
        if len(notes):
            by_piece[piece].append(notes)
    table = {}
    for piece, notes in sorted(by_piece.items()):
        counts = {k: v.sum(axis=0) for k, v in histogram_table(notes).items()}
        steps = [sounding(n) for n in notes]
        table[piece] = {
            **counts,
            "length_steps": np.bincount(
                np.minimum(np.concatenate([n.end - n.start for n in notes]), LONGEST),
                minlength=LONGEST + 1,
            ),
            "steps": np.array(
                [sum(len(s) for s in steps), sum((s > CROWDED_NOTES).sum() for s in steps)]
            ),
        }
    return table, dict(zip(table, assign(list(table), held, source), strict=True))


def median_length(counts: np.ndarray) -> float:
    """The median note length in seconds, from a count of each length in 10 ms steps."""
    return float(np.searchsorted(np.cumsum(counts), (counts.sum() + 1) / 2)) / STEPS_PER_SECOND


def compare(table: dict, a: list[str], b: list[str]) -> dict[str, float]:
    """How two sets of pieces differ."""
    summed = [{k: sum(table[p][k] for p in side) for k in table[a[0]]} for side in (a, b)]
    overlaps = {
        k: float(histogram_overlap(summed[0][k], summed[1][k]))
        for k in summed[0]
        if k not in ("steps", "length_steps")
    }
    medians = [median_length(side["length_steps"]) for side in summed]
    crowded = [side["steps"][1] / max(side["steps"][0], 1) for side in summed]
    return {
        "duration_overlap": overlaps["duration"],
        "mean_overlap": float(np.mean(list(overlaps.values()))),
        "median_note_gap": float(abs(medians[0] - medians[1])),
        "crowded_gap": float(abs(crowded[0] - crowded[1])),
    }


def draws(table: dict, size: int, against: int, count: int, seed: int) -> dict[str, dict]:
    """Quantiles of `compare` over `count` random disjoint draws of `size` and `against`
    pieces."""
    pieces, rng = list(table), np.random.default_rng(seed)
    if size + against > len(pieces):
        raise SystemExit(f"{len(pieces)} pieces: too few to draw {size} and {against} apart")
    found = defaultdict(list)
    for _ in range(count):
        order = rng.permutation(len(pieces))
        a, b = [pieces[i] for i in order[:size]], [pieces[i] for i in order[size : size + against]]
        for key, value in compare(table, a, b).items():
            found[key].append(value)
    return {
        key: {f"q{round(q * 100)}": float(np.quantile(v, q)) for q in QUANTILES}
        for key, v in found.items()
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a MIDI corpus (its training pieces)")
    parser.add_argument(
        "--test",
        help="the corpus's own test set, when it brings one (ASAP's valid/); default: the "
        "test pieces the music task carves out of --data",
    )
    parser.add_argument("--sizes", nargs="+", type=int, default=[20], help="pieces in one draw")
    parser.add_argument("--against", type=int, default=20, help="pieces in the other draw")
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", help="JSON report")
    args = parse_args(parser, argv)
    table, splits = piece_table(args.data, ["dev"] if args.test else HELD_OUT)
    drawn = {piece: found for piece, found in table.items() if splits[piece] != "test"}
    found = {
        str(size): draws(drawn, size, args.against, args.draws, args.seed) for size in args.sizes
    }
    # the one place test is read: how its pieces differ from the dev pieces of the code
    tests = {p: t for p, t in table.items() if splits[p] == "test"}
    if args.test:
        tests = {f"test: {p}": t for p, t in piece_table(args.test, ())[0].items()}
    dev = [piece for piece in drawn if splits[piece] == "dev"]
    dev_vs_test = compare({**drawn, **tests}, dev, list(tests)) if dev and tests else {}
    rows = [
        [f"{size} vs {args.against}", key, *(f"{v:.3f}" for v in quantiles.values())]
        for size, figures in found.items()
        for key, quantiles in figures.items()
    ]
    header = ["pieces", "figure", *(f"q{round(q * 100)}" for q in QUANTILES)]
    print(f"{args.data}: {len(drawn)} pieces to draw from, {args.draws} draws each\n")
    print(markdown_table(header, rows))
    pair = f"dev ({len(dev)} pieces) vs test ({len(tests)})"
    print(
        "\n" + markdown_table(["figure", pair], [[k, f"{v:.3f}"] for k, v in dev_vs_test.items()])
    )
    report = write_report(
        args.report,
        {
            "data": args.data,
            "pieces": len(drawn),
            "against": args.against,
            "draws": args.draws,
            "seed": args.seed,
            "sizes": found,
            "dev_pieces": len(dev),
            "test_pieces": len(tests),
            "dev_vs_test": dev_vs_test,
        },
    )
    print(report["cpu"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
