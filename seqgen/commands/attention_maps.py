"""`seqgen attention`: heat maps of what each head attends to, with the tokens on both axes,
in the spirit of the Illustrated GPT-2's figures.

Rows are the attending positions (queries), columns the positions attended to (keys); a
row's colours sum to 1 over the whole sequence. The task names the tokens (music: `ON C4`,
`SHIFT 120ms`) and marks where the parts of a sequence start (translation: the source after
the language tag, the target after the delimiter) with lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from seqgen.devices import DeviceOptions
from seqgen.files import check_writable

PANEL_INCHES_PER_TOKEN = 0.22
LABELLED_PANELS = 4  # with more panels, only the outer ones name the tokens


@dataclass(kw_only=True)
class AttentionConfig(DeviceOptions):
    """Attention heat maps of a checkpoint on a prompt: one panel per head, layers as rows."""

    ckpt: str
    """Checkpoint or run directory."""
    prompt: str = ""
    """The input, as for seqgen generate (text; music: a MIDI file)."""
    out: str
    """Image to write (.png, .svg or .pdf)."""
    layer: int | None = None
    """Layer to draw, from 0 (default: every layer, one row each)."""
    head: int | None = None
    """Head to draw, from 0 (default: every head)."""
    max_new_tokens: int | None = None
    """Tokens to generate greedily after the prompt, drawn with it (default: 24 for tasks
    that answer a prompt, such as translation, so that the target's attention to its source
    shows; 0 for tasks that continue it)."""
    max_tokens: int = 48
    """Draw the last this many positions (a longer sequence is cut from the left)."""

    def __post_init__(self) -> None:
        DeviceOptions.__post_init__(self)
        for name in ("layer", "head", "max_new_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_tokens < 2:
            raise ValueError(f"max_tokens must be >= 2, got {self.max_tokens}")
        check_writable(self.out, "out")


def sequence(config: AttentionConfig, generator) -> list[int]:
    """The prompt's ids and, where asked, the greedy continuation."""
    ids = generator.prompt_ids(config.prompt)
    new = config.max_new_tokens
    if new is None:
        new = 0 if generator.task.continues_prompt else 24
    if new:
        ids = ids + generator.continue_ids(ids, max_new_tokens=new, temperature=0.0, num_beams=1)
    return ids


def panels(config: AttentionConfig, n_layer: int, n_head: int) -> list[tuple[int, int]]:
    """(layer, head) pairs to draw, checked against the model's shape."""
    for name, value, count in (("layer", config.layer, n_layer), ("head", config.head, n_head)):
        if value is not None and value >= count:
            plural, valid = ("", "0") if count == 1 else ("s", f"0-{count - 1}")
            raise ValueError(
                f"--{name} {value}: the model has {count} {name}{plural} (give {valid})"
            )
    layers = range(n_layer) if config.layer is None else [config.layer]
    heads = range(n_head) if config.head is None else [config.head]
    return [(layer, head) for layer in layers for head in heads]


def draw(config: AttentionConfig) -> list[tuple[int, int]]:
    """Write the figure; returns the (layer, head) panels drawn, row by row."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    from matplotlib.colors import PowerNorm

    from seqgen.inference import load

    generator = load(config.ckpt, pack=False, **config.load_options())
    model, task, tokenizer = generator.model, generator.task, generator.tokenizer
    chosen = panels(config, model.config.n_layer, model.config.n_head)
    ids = sequence(config, generator)
    window = ids[-model.config.block_size :]  # what the model sees at the last position
    with torch.no_grad():
        states = generator.states(ids)
        if states is not None:
            states = torch.from_numpy(states[-len(window) :]).float()[None].to(generator.device)
        inputs = torch.tensor([window], device=generator.device)
        maps = [m.float().cpu() for m in model.attention_maps(inputs, states)]  # (1, nh, T, T)
    first = max(0, len(window) - config.max_tokens)
    shown = window[first:]
    offset = len(ids) - len(shown)  # position in `ids` of the first one shown
    labels = [task.token_label(t, tokenizer) for t in shown]
    starts = [s - offset for s in task.segment_starts(ids, tokenizer) if offset < s < len(ids)]
    rows = sorted({layer for layer, _ in chosen})
    cols = sorted({head for _, head in chosen})
    side = min(8.0, max(2.5, PANEL_INCHES_PER_TOKEN * len(shown)))
    size = (side * len(cols) + 1.2, side * len(rows) + 0.8)
    figure, axes = plt.subplots(
        len(rows), len(cols), squeeze=False, figsize=size, dpi=110, layout="constrained"
    )
    norm = PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0)  # small weights stay visible
    labelled = len(chosen) <= LABELLED_PANELS
    for layer, head in chosen:
        r, c = rows.index(layer), cols.index(head)
        ax = axes[r][c]
        weights = maps[layer][0, head, first:, first:].float().numpy()
        image = ax.imshow(weights, cmap="Blues", norm=norm, interpolation="nearest")
        for start in starts:
            ax.axvline(start - 0.5, color="#d62728", lw=1)
            ax.axhline(start - 0.5, color="#d62728", lw=1)
        ax.set_title(f"layer {layer}, head {head}", fontsize=9)
        ticks = range(len(shown))
        show_x = labelled or r == len(rows) - 1
        show_y = labelled or c == 0
        ax.set_xticks(ticks, labels if show_x else [], rotation=90, fontsize=7)
        ax.set_yticks(ticks, labels if show_y else [], fontsize=7)
    cut = f" (the last {len(shown)} of {len(ids)} positions)" if offset else ""
    name = f"{generator.path.parent.name}/{generator.path.name}"
    figure.suptitle(f"attention of {name}: rows attend to columns{cut}", fontsize=10)
    figure.colorbar(image, ax=axes, shrink=0.6, label="attention weight (square-root scale)")
    Path(config.out).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(config.out)
    plt.close(figure)
    return chosen
