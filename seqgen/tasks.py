"""The task interface and its registry, found through the `seqgen.tasks` entry points.

The core never imports task adapters: a package (this repository's `tasks`, or a third
party's) declares `[project.entry-points."seqgen.tasks"] name = "module:Class"`.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, Protocol

from seqgen.errors import ConfigError
from seqgen.examples import Example
from seqgen.tokenizer import Tokenizer, TokenizerConfig

ENTRY_POINT_GROUP = "seqgen.tasks"


class Task(Protocol):
    """A domain adapter: raw examples <-> token sequences with a loss mask, prompts, outputs.

    Fine-tuning (`seqgen finetune`) uses `data_config`, `special_tokens`, `load`,
    `build_tokenizer` and `encode`; generation uses `configure`, `prompt` and `decode`. The
    options a task needs at inference (e.g. the target language) travel in the checkpoint as
    `options(data)`.

    Three optional hooks (a task without them gets the shared behaviour):
        `datamodule(train, val, tokenizer, block_size, batch_size)` returns a
            `seqgen.data.WindowDataModule` of windows the task draws itself (music: augmented
            draws from whole performances) instead of training on `encode`d examples.
        `generate_cli(argv)` runs `seqgen generate` for checkpoints of the task, when its
            inputs and outputs are not text (music reads and writes MIDI files).
        `mbr_similarity()` returns `similarity(output, other)` for minimum Bayes risk
            decoding (`seqgen generate --mbr-samples N`), e.g. ROUGE for summaries.
    """

    name: str
    data_config: type | None
    """The dataclass of the task's data options (`data.*` in a fine-tuning config)."""
    stats: dict[str, int]
    """Counts from loading and encoding (skipped lines, truncated examples), for reports."""
    lm_weight: float
    """Default weight of the auxiliary LM loss over the whole sequence (GPT-1: 0.5)."""
    continues_prompt: bool
    """Whether outputs continue the prompt (text: the CLI prints both) or answer it."""
    generation_defaults: dict[str, Any]
    """Generation settings for `seqgen generate` unless given (e.g. beam search)."""
    data_builders: dict[str, Callable[[list[str]], int]]
    """Dataset builders run as `seqgen data NAME ...` (argv in, exit code out)."""

    def special_tokens(self, data: Any) -> list[str]:
        """Tokens the task adds to the vocabulary (appended; existing ids never change)."""
        ...

    def load(self, data: Any, split: str) -> list[dict]:
        """Raw examples of `split` ("train" or "val")."""
        ...

    def build_tokenizer(self, examples: list[dict], config: TokenizerConfig) -> Tokenizer:
        """A tokenizer for training from scratch, e.g. SentencePiece on the examples' text."""
        ...

    def encode(self, example: dict, tokenizer: Tokenizer, max_len: int) -> Example:
        """The training sequence (at most max_len ids) and its loss mask."""
        ...

    def options(self, data: Any) -> dict[str, Any]:
        """JSON-able settings stored in the checkpoint and given back to `configure`."""
        ...

    def configure(self, options: dict[str, Any], block_size: int) -> None:
        """Apply the settings of `options` and the model's context: before encoding training
        examples, and before prompting from a checkpoint."""
        ...

    def prompt(self, source: Any, tokenizer: Tokenizer) -> list[int]:
        """Conditioning ids for generation from a user's input (text, a MIDI file, ...)."""
        ...

    def decode(self, ids: list[int], tokenizer: Tokenizer) -> Any:
        """The output object (text, MIDI) of generated ids."""
        ...

    def evaluate(self, argv: list[str]) -> dict[str, Any]:
        """`seqgen evaluate --task NAME ...`: parse the arguments, score, print, return a report."""
        ...


def available_tasks() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def get_task(name: str) -> Task:
    tasks = available_tasks()
    if name not in tasks:
        known = ", ".join(sorted(tasks)) or "none (is seqgen installed with `pip install -e .`?)"
        raise ConfigError(f"unknown task {name!r}; installed tasks: {known}")
    return tasks[name].load()()


def data_builders() -> dict[str, Callable[[list[str]], int]]:
    """Every installed task's dataset builders, by name."""
    found: dict[str, Callable[[list[str]], int]] = {}
    for name in sorted(available_tasks()):
        found.update(get_task(name).data_builders)
    return found
