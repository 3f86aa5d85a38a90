"""Piano-roll pictures: one bar per note (time across, pitch up), the prompt in one colour
and the continuation in another."""

from __future__ import annotations

from pathlib import Path

import pretty_midi

PROMPT_COLOUR, CONTINUATION_COLOUR = "#1f77b4", "#ff7f0e"


def piano_roll(midi: pretty_midi.PrettyMIDI, prompt_seconds: float, path: str | Path) -> None:
    """Save a piano roll of `midi`; notes starting before `prompt_seconds` are the prompt's
    (louder notes are drawn darker)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba
    from matplotlib.patches import Patch

    notes = [n for instrument in midi.instruments for n in instrument.notes]
    end = max((n.end for n in notes), default=1.0)
    fig, ax = plt.subplots(figsize=(max(6.0, min(24.0, end / 2)), 4.5), dpi=120)
    for colour, part in (
        (PROMPT_COLOUR, [n for n in notes if n.start < prompt_seconds]),
        (CONTINUATION_COLOUR, [n for n in notes if n.start >= prompt_seconds]),
    ):
        if part:
            ax.barh(
                [n.pitch for n in part],
                [n.end - n.start for n in part],
                left=[n.start for n in part],
                height=0.8,
                color=[to_rgba(colour, 0.35 + 0.65 * n.velocity / 127) for n in part],
            )
    if prompt_seconds > 0:
        ax.axvline(prompt_seconds, color="black", linewidth=0.8, linestyle="--")
    pitches = [n.pitch for n in notes] or [60]
    ax.set_ylim(min(pitches) - 2, max(pitches) + 2)
    ax.set_xlim(0, end)
    ax.set_xlabel("seconds")
    ax.set_ylabel("MIDI pitch")
    ax.legend(
        handles=[
            Patch(color=PROMPT_COLOUR, label="prompt"),
            Patch(color=CONTINUATION_COLOUR, label="continuation"),
        ],
        loc="upper right",
        fontsize="small",
    )
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
