"""The music task's held-out splits, fixed in the code: `dev`, which training validates on
and on which recipes, rules and thresholds are chosen, and `test`, which training never
reads and on which figures are reported.

A corpus that has no separate dev or test set gives 5% of its pieces to each, chosen by a
hash of the piece's name, so the split is the same on every machine and does not move when
files are added. A piece is the folder a performance lies in under the corpus (ASAP:
`Bach__Fugue__bwv_846/`, all its performers' takes), or the file's name where it lies at
the top (POP909: song `001`); no piece is in two splits.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from seqgen.data import hashed_share
from seqgen.errors import DataError

HELD_OUT = ("dev", "test")
SHARES: dict[str, tuple[float, float]] = {"test": (0.0, 0.05), "dev": (0.05, 0.10)}
"""Each held-out split's range of the piece hash: 5% of the pieces each."""


def piece_of(file: Path, root: Path) -> str:
    """The piece a MIDI file under `root` belongs to."""
    try:
        relative = file.resolve().relative_to(root.resolve())
    except ValueError:  # a .txt list may name files elsewhere
        return file.stem
    return relative.parent.as_posix() if len(relative.parts) > 1 else relative.stem


def split_of(piece: str) -> str:
    """`test`, `dev` or `train`: where the hash of the piece's name falls."""
    share = hashed_share(piece)
    return next((name for name, (low, high) in SHARES.items() if low <= share < high), "train")


def assign(pieces: list[str], held: Collection[str], source: str) -> list[str]:
    """The split of each performance (given its piece) when the splits in `held` are carved
    out of `source`; the others train. A held split that the hash leaves empty (a corpus of
    a few pieces) takes the training piece of lowest hash, so each has one piece at least."""
    split = {piece: split_of(piece) for piece in pieces}
    for name in split:
        if split[name] not in held:
            split[name] = "train"
    for name in sorted(held, key=lambda s: SHARES[s][0]):
        if name not in split.values():
            training = sorted((p for p, s in split.items() if s == "train"), key=hashed_share)
            if training:
                split[training[0]] = name
    if "train" not in split.values():
        raise DataError(
            f"{source}: {len(split)} piece(s); holding out "
            f"{' and '.join(sorted(held))} by piece leaves none to train on: give data.val "
            "and data.test, or more pieces"
        )
    return [split[piece] for piece in pieces]
