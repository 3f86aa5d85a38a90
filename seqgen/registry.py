"""The installed tasks, found through the `seqgen.tasks` entry points: a package (seqgen's own
`seqgen_tasks`, or a third party's) declares `[project.entry-points."seqgen.tasks"]
name = "module:Class"`. Listing them imports nothing; `task_class` imports one task's module."""

from __future__ import annotations

import logging
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING

from seqgen.errors import ConfigError
from seqgen.tasks import BuildsDatasets, DatasetBuilder, Task

if TYPE_CHECKING:
    from seqgen.download import RemoteDataset

log = logging.getLogger("seqgen")
ENTRY_POINT_GROUP = "seqgen.tasks"


def available_tasks() -> dict[str, EntryPoint]:
    """The installed tasks by name (nothing is imported)."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def task_class(name: str) -> type[Task]:
    """The installed task `name`; only its own module is imported."""
    tasks = available_tasks()
    if name not in tasks:
        known = ", ".join(sorted(tasks)) or "none (is seqgen installed with `pip install -e .`?)"
        raise ConfigError(f"unknown task {name!r}; installed tasks: {known}")
    try:
        cls = tasks[name].load()
    except Exception as err:  # a third party's import error, whatever its type
        raise ConfigError(
            f"task {name!r} ({tasks[name].value}) failed to load: {type(err).__name__}: {err}"
        ) from err
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ConfigError(f"task {name!r} ({tasks[name].value}) is not a seqgen.tasks.Task")
    return cls


def data_builders() -> dict[str, DatasetBuilder]:
    """Every installed task's dataset builders, by name."""
    return {k: v for cls in _dataset_tasks() for k, v in cls.data_builders.items()}


def remote_datasets() -> dict[str, RemoteDataset]:
    """Every installed task's datasets for `seqgen data get`, by name."""
    return {k: v for cls in _dataset_tasks() for k, v in cls.datasets.items()}


def _dataset_tasks() -> list[type[BuildsDatasets]]:
    """The installed tasks that build or fetch datasets (a task that fails to load is
    skipped with a warning: it must not hide the others)."""
    found = []
    for name in sorted(available_tasks()):
        try:
            cls = task_class(name)
        except ConfigError as err:
            log.warning("%s", err)
            continue
        if issubclass(cls, BuildsDatasets):
            found.append(cls)
    return found
