"""Reports as tables a person reads in a terminal and pastes into Markdown: one way to print
them for every command, evaluation and benchmark."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

# a number as printed (possibly signed, with separators, an interval or a unit after it)
NUMBER = re.compile(r"^[+-]?\d[\d,]*(\.\d+)?([ %].*)?$")


def cell(value: Any) -> str:
    """Counts with thousands separators; floats with 4 decimals below 10, else 2."""
    if isinstance(value, bool) or value is None:
        return str(value).lower() if isinstance(value, bool) else "-"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.3g}"
        return f"{value:,.4f}" if abs(value) < 10 else f"{value:,.2f}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table with its columns aligned (numbers to the right). Cells are values
    (formatted by `cell`) or strings already formatted."""
    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(header)]
    numeric = [
        bool(cells) and all(NUMBER.match(row[i]) for row in cells) for i in range(len(header))
    ]

    def line(values: Sequence[str]) -> str:
        padded = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if num else "-" * (w + 2)
            for w, num in zip(widths, numeric, strict=True)
        )
        + "|"
    )
    return "\n".join([line(header), rule, *(line(row) for row in cells)])


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys: {"data": {"train": 2}} -> {"data.train": 2}."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = "none" if isinstance(value, dict) else value
    return flat


def key_value_table(title: str, values: dict[str, Any]) -> str:
    """A title and one aligned `key  value` line per (flattened) entry."""
    flat = flatten(values)
    width = max((len(k) for k in flat), default=0)
    return "\n".join([title, *(f"  {key:<{width}}  {cell(value)}" for key, value in flat.items())])
