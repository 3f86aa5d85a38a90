"""Shared by the benchmark scripts (run as `python benchmarks/NAME.py`, so importable)."""

from __future__ import annotations

import json
from pathlib import Path


def write_report(path: str | None, report: dict) -> None:
    """Write the results as indented JSON to `path` (its folder created), if a path is given."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, indent=2) + "\n")
