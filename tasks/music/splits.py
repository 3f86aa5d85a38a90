"""The music task's held-out splits, fixed in the code: `dev`, which training validates on
and on which recipes, rules and thresholds are chosen, and `test`, which training never
reads and on which figures are reported.

A corpus holds out 10% of its pieces, chosen by a hash of the piece's name, so the split is
the same on every machine and does not move when files are added: 5% each to dev and test
when it brings neither (POP909), all 10% to the one it lacks when it brings the other (ASAP
brings its test, `valid/`, 20 pieces; 5% of its 191 training pieces made a dev of 8, too
few to choose on). A piece is the folder a performance lies in under the corpus (ASAP:
`Bach__Fugue__bwv_846/`, all its performers' takes), or the file's name where it lies at
the top (POP909: song `001`); no piece is in two splits.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from seqgen.data import hashed_share
from seqgen.errors import DataError

HELD_OUT = ("test", "dev")
"""The held-out splits, in the order they share the low end of the piece hash."""
HELD_OUT_SHARE = 0.10
"""The share of a corpus's pieces held out, split evenly among the splits it lacks."""


def piece_of(file: Path, root: Path) -> str:
    """The piece a MIDI file under `root` belongs to."""
    try:
        relative = file.resolve().relative_to(root.resolve())
    except ValueError:  # a .txt list may name files elsewhere
        return file.stem
    return relative.parent.as_posix() if len(relative.parts) > 1 else relative.stem


def split_of(piece: str, held: Collection[str] = HELD_OUT) -> str:
    """`train`, or the split in `held` where the hash of the piece's name falls."""
    share, names = hashed_share(piece), [name for name in HELD_OUT if name in held]
    if share >= HELD_OUT_SHARE or not names:
        return "train"
    return names[int(share / HELD_OUT_SHARE * len(names))]


def assign(pieces: list[str], held: Collection[str], source: str) -> list[str]:
    """The split of each performance (given its piece) when the splits in `held` are carved
    out of `source`; the others train. A held split that the hash leaves empty (a corpus of
    a few pieces) takes the training piece of lowest hash, so each has one piece at least."""
    split = {piece: split_of(piece, held) for piece in pieces}
    for name in HELD_OUT:
        if name in held and name not in split.values():
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
