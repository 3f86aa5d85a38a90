"""Shared by the benchmark scripts (run as `python benchmarks/NAME.py`, so importable)."""

from __future__ import annotations

from seqgen.evaluation import write_json as write_report  # one JSON writer for every report

__all__ = ["write_report"]
