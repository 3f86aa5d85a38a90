"""Does the model end its notes? For each checkpoint, the probability it gives to releasing
one of the notes sounding and to striking a new one, by how many notes sound, next to how
often that happened: teacher-forced on its dev performances (what the performer did) and
along its own continuations of them with `--rules valid` (the model alone, from each
performance's first 10 s, sampling seed 1, as `benchmarks/music_rules.py` plays them).

A model that carries the music releases more as more notes sound, as performers do; one
whose release probability stays flat while its onsets go on piles its chords up.

    python -m benchmarks.music_releases --ckpt runs/bench/asap_v2/seed1 \
        --ckpt runs/bench/asap_v2/seed2 --performances 12 --report runs/bench/releases.json
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
import torch

from benchmarks.common import parse_args, write_report
from seqgen.inference import load
from seqgen.tables import markdown_table
from seqgen_tasks.music.continuation import play, strided_logits
from seqgen_tasks.music.evaluate import MusicEval, held_out
from seqgen_tasks.music.events import NOTE_OFF, NOTE_ON, encode_notes, is_note_off, is_note_on
from seqgen_tasks.music.state import sounding_counts

BUCKETS = (0, 1, 3, 5, 7, 9, 11, 14, 18)
"""The lower edges of the bins of notes sounding."""
FIGURES = ("p_release", "released", "p_onset", "struck")


def predictions(generator, ids: list[int], first: int) -> np.ndarray:
    """For each id from `first` on, a row: the notes sounding before it, the model's
    probability of releasing one of them, whether the id released one, its probability of
    an onset, whether the id is one."""
    counts = sounding_counts(np.asarray(ids, dtype=np.int64))
    rows = []
    for begin, logits in strided_logits(generator.model, ids, first, generator.states(ids)):
        probs = torch.softmax(logits, dim=-1).cpu().numpy()
        n = len(probs)
        before = counts[begin - 1 : begin - 1 + n]  # (n, 128) the notes sounding before each id
        sounding = before > 0
        targets = np.asarray(ids[begin : begin + n])
        pitch = np.clip(targets - NOTE_OFF, 0, 127)
        rows.append(
            np.stack(
                [
                    before.sum(axis=1),
                    (probs[:, NOTE_OFF : NOTE_OFF + 128] * sounding).sum(axis=1),
                    is_note_off(targets) & sounding[np.arange(n), pitch],
                    probs[:, NOTE_ON : NOTE_ON + 128].sum(axis=1),
                    is_note_on(targets),
                ],
                axis=1,
            )
        )
    return np.concatenate(rows) if rows else np.zeros((0, 5))


def by_sounding(rows: np.ndarray) -> list[dict[str, float]]:
    """The mean of each figure over the events in each bin of notes sounding (None in an
    empty bin)."""
    bins = []
    for low, high in zip(BUCKETS, (*BUCKETS[1:], np.inf), strict=True):
        inside = rows[(rows[:, 0] >= low) & (rows[:, 0] < high)]
        means = inside[:, 1:].mean(axis=0).tolist() if len(inside) else [None] * len(FIGURES)
        bins.append(
            {"sounding": low, "events": len(inside), **dict(zip(FIGURES, means, strict=True))}
        )
    return bins


def model_releases(ckpt: str, args: argparse.Namespace) -> dict:
    """The checkpoint's figures, teacher-forced and free-running, by notes sounding."""
    generator = load(ckpt, task="music")
    performances, _ = held_out(MusicEval(ckpt=ckpt, split="dev"), generator)
    performances = performances[: args.performances]
    bos = generator.tokenizer.bos_id
    forced = [
        predictions(generator, [bos, *encode_notes(p)[: args.events].tolist()], 1)
        for p in performances
    ]
    found = play(generator, performances, args.prompt_seconds, args.seconds, args.seed, "valid")
    free = [
        predictions(generator, [*prompt, *new], len(prompt))
        for prompt, new in zip(found.prompts, found.new, strict=True)
    ]
    figures = {
        "ckpt": ckpt,
        "performances": len(performances),
        "performer": by_sounding(np.concatenate(forced)),
        "model_alone": by_sounding(np.concatenate(free)),
    }
    header = ["notes sounding", "events", *FIGURES]
    for side in ("performer", "model_alone"):
        print(f"\n{ckpt}, {side}:")
        rows = [[b["sounding"], b["events"], *(b[f] for f in FIGURES)] for b in figures[side]]
        print(markdown_table(header, rows))
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", action="append", required=True, help="a music checkpoint")
    parser.add_argument("--performances", type=int, default=12, help="the first N dev ones")
    parser.add_argument("--events", type=int, default=3000, help="teacher-forced per performance")
    parser.add_argument("--prompt_seconds", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=1, help="the sampling seed")
    parser.add_argument("--report", help="JSON report")
    args = parse_args(parser, argv)
    models = [model_releases(ckpt, args) for ckpt in args.ckpt]
    print(write_report(args.report, {"models": models, "seed": args.seed})["cpu"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
