"""The task interface and its registry, found through the `seqgen.tasks` entry points.

The core never imports task adapters: a package (this repository's `tasks`, or a third
party's) declares `[project.entry-points."seqgen.tasks"] name = "module:Class"`.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any, Protocol

from seqgen.errors import ConfigError
from seqgen.tokenizer import Tokenizer

ENTRY_POINT_GROUP = "seqgen.tasks"


class Task(Protocol):
    name: str
    special_tokens: tuple[str, ...]

    def prompt(self, source: Any, tokenizer: Tokenizer) -> list[int]:
        """Conditioning ids for generation from a user's input (text, a MIDI file, ...)."""
        ...

    def decode(self, ids: list[int], tokenizer: Tokenizer) -> Any:
        """The output object (text, MIDI) of generated ids."""
        ...


def available_tasks() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def get_task(name: str) -> Task:
    tasks = available_tasks()
    if name not in tasks:
        known = ", ".join(sorted(tasks)) or "none (is seqgen installed with `pip install -e .`?)"
        raise ConfigError(f"unknown task {name!r}; installed tasks: {known}")
    return tasks[name].load()()
