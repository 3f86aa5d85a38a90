"""The task contract: what a task implements, and the optional capabilities it may add.

A task turns a domain (text, sentence pairs, articles, MIDI) into token sequences and back.
The core never imports task adapters: a package (seqgen's own `seqgen_tasks`, or a third
party's) declares `[project.entry-points."seqgen.tasks"] name = "module:Class"`, and
`seqgen.registry` finds it.

Data flows one way: `load` (raw splits) -> `build_tokenizer` (from scratch only) ->
`training_data` (examples or windows; the core batches and trains), with `learned_options`
(what generation learns from the training data, stored in the checkpoint) ... `prompt` (a
user's input to ids) -> the generation engine -> `decode` (ids to text, MIDI, ...).

A task object is configured once, when it is made: from its data options and the model's
context (`Task(data, block_size)`) to train, or from what a checkpoint stored
(`Task.from_options`) to generate. Nothing needs calling in a particular order.
Optional capabilities are small base classes (`Evaluates`, `HasMBR`, `BuildsDatasets`,
`SamplesText`, `GeneratesFiles`) that the core checks with isinstance; `Similarity` is an MBR
utility that scores a group of samples at once.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar

from seqgen.config import check_types
from seqgen.errors import ConfigError

if TYPE_CHECKING:  # the registry is read by `seqgen --help`, which must not load torch
    from pathlib import Path

    from torch.utils.data import Dataset

    from seqgen.download import RemoteDataset
    from seqgen.state import TokenState
    from seqgen.tokenizer import Tokenizer, TokenizerConfig
    from seqgen.training.examples import Example

log = logging.getLogger("seqgen")


@dataclass
class Splits:
    """A task's raw training and validation data (documents, pairs, performances)."""

    train: Sequence[Any]
    val: Sequence[Any]
    fingerprint: str | None = None
    """Changes when the data changes (for caches of its encoded form), if the task knows one."""


@dataclass
class Examples:
    """Training data as separate sequences with loss masks, batched by similar length."""

    train: list[Example]
    val: list[Example]


@dataclass
class Windows:
    """Training data as windows of the context drawn from long streams (text, music).

    `train[i]` is a window starting at offset i (it has `block_size`); an epoch draws as
    many windows as fit side by side. `val` is a fixed set of windows.
    """

    train: Dataset
    val: Dataset


def known_options(config_class: type, values: dict[str, Any]) -> dict[str, Any]:
    """The entries of `values` that are fields of the dataclass `config_class`."""
    names = {f.name for f in fields(config_class)}
    return {key: value for key, value in values.items() if key in names}


class Task(ABC):
    """A domain adapter. Subclasses set the class attributes and implement the five methods.

    Attributes:
        name: the task's registry name (stored in checkpoints).
        data_config: the dataclass of its `data.*` options; its field docstrings are the
            CLI help.
        stored_options: the `data_config` fields that inference needs (e.g. the target
            language); stored in checkpoints and given back by `from_options`.
        option_defaults: values for stored options that an older checkpoint lacks.
        lm_weight: default weight of the auxiliary LM loss over the whole sequence (GPT-1).
        continues_prompt: whether outputs continue the prompt (text) or answer it.
        data: the task's data options; block_size: the model's context; stats: counts from
            loading and encoding (skipped lines, truncated examples) for the training report.
    """

    name: ClassVar[str]
    data_config: ClassVar[type]
    stored_options: ClassVar[tuple[str, ...]] = ()
    option_defaults: ClassVar[dict[str, Any]] = {}
    lm_weight: ClassVar[float] = 0.0
    continues_prompt: ClassVar[bool] = False

    def __init__(self, data: Any = None, block_size: int = 1024) -> None:
        self.data = self.data_config() if data is None else data
        if not isinstance(self.data, self.data_config):
            raise ConfigError(
                f"task {self.name!r} takes data options of type "
                f"{self.data_config.__name__}, not {type(data).__name__}"
            )
        self.block_size = block_size
        self.stats: dict[str, Any] = {}
        self.recipe_generation: dict[str, Any] = {}

    @classmethod
    def from_options(
        cls, options: dict[str, Any], block_size: int, decoding: dict[str, Any] | None = None
    ) -> Task:
        """The task as a checkpoint stored it (`options()`), for the model's context, with
        the generation defaults its training recipe set (`RunConfig.generation`)."""
        values = {**cls.option_defaults, **options}
        stored = {key: values[key] for key in cls.stored_options if key in values}
        data = cls.data_config(**stored)
        try:
            check_types(data, "task_options")
        except ConfigError as err:
            raise ConfigError(f"the checkpoint's {err}") from None
        task = cls(data, block_size)
        task.recipe_generation = dict(decoding or {})
        return task

    def options(self) -> dict[str, Any]:
        """JSON-able settings stored in the checkpoint, given back to `from_options`."""
        return {key: getattr(self.data, key) for key in self.stored_options}

    def generation_defaults(self) -> dict[str, Any]:
        """Generation options this task decodes with unless told otherwise (e.g. beam search
        for translation): the defaults of `seqgen generate`, of evaluation and of
        `Generator`."""
        return {}

    def decoding_defaults(self) -> dict[str, Any]:
        """What generation uses where a call does not say: the task's defaults, under those
        of the recipe that trained the checkpoint."""
        return {**self.generation_defaults(), **self.recipe_generation}

    def special_tokens(self) -> list[str]:
        """Tokens the task adds to the vocabulary (appended; existing ids never change)."""
        return []

    def token_label(self, token: int, tokenizer: Tokenizer) -> str:
        """A token as attention maps name it: its text, spaces as `·`, line breaks as `\\n`
        (a task whose tokens are not text names them its own way)."""
        text = tokenizer.decode([token], skip_special=False)
        if not text or "\ufffd" in text:  # part of a UTF-8 character
            return f"#{token}"
        return text.replace(" ", "·").replace("\n", "\\n").replace("\t", "\\t")

    def token_state(self) -> TokenState | None:
        """What the model reads beside each token, computed from the ids so far (music: the
        notes sounding), or None. Its size becomes `model.state_size` when training from
        scratch; training data carry it as "state" (`seqgen.data.padded_window`), and
        generation advances it as ids arrive."""
        return None

    def segment_starts(self, ids: list[int], tokenizer: Tokenizer) -> list[int]:
        """Positions where a new part of a sequence starts (e.g. a translation's target after
        its source), marked in attention maps."""
        return []

    @abstractmethod
    def load(self) -> Splits:
        """The raw training and validation data named by `self.data`."""

    @abstractmethod
    def build_tokenizer(self, splits: Splits, config: TokenizerConfig) -> Tokenizer:
        """A tokenizer for training from scratch, e.g. SentencePiece on the training text."""

    @abstractmethod
    def training_data(self, splits: Splits, tokenizer: Tokenizer) -> Examples | Windows:
        """The sequences the model trains and validates on (at most block_size + 1 ids)."""

    def learned_options(self, splits: Splits) -> dict[str, Any]:
        """What generation learns from the training data, stored with the checkpoint's
        task options (music: how long the notes of each octave sound); none by default. A
        task never writes these into itself while training: it reads them back when a
        checkpoint is loaded (`from_options`)."""
        return {}

    @abstractmethod
    def prompt(self, source: Any, tokenizer: Tokenizer) -> list[int]:
        """Conditioning ids for generation from a user's input (text, a MIDI file, ...)."""

    @abstractmethod
    def decode(self, ids: list[int], tokenizer: Tokenizer) -> Any:
        """The output object (text, MIDI) of generated ids."""


class ExampleTask(Task):
    """A task whose data are separate examples, each encoded into one training sequence."""

    @abstractmethod
    def load_split(self, split: str) -> list[Any]:
        """The raw examples of `split` ("train" or "val")."""

    def load(self) -> Splits:
        return Splits(self.load_split("train"), self.load_split("val"))

    @abstractmethod
    def encode(self, example: Any, tokenizer: Tokenizer, max_len: int) -> Example:
        """The training sequence (at most max_len ids) and its loss mask."""

    def training_data(self, splits: Splits, tokenizer: Tokenizer) -> Examples:
        max_len = self.block_size + 1  # inputs and targets are the sequence shifted by one
        encoded = {}
        for split, raw in (("train", splits.train), ("val", splits.val)):
            examples = [self.encode(example, tokenizer, max_len) for example in raw]
            truncated = [e.truncated for e in examples if e.truncated]
            if truncated:
                log.info(
                    "%s: %d of %d examples cut to fit the %d-token context",
                    split,
                    len(truncated),
                    len(examples),
                    self.block_size,
                )
            self.stats.update(
                {f"{split}_truncated": len(truncated), f"{split}_truncated_tokens": sum(truncated)}
            )
            encoded[split] = examples
        return Examples(encoded["train"], encoded["val"])


# ---------------------------------------------------------------- optional capabilities


class Evaluates(ABC):
    """`seqgen evaluate --task NAME`: scores a checkpoint or a system's outputs.

    `eval_config` is a dataclass (usually a `seqgen.evaluation.EvalConfig`); its fields are
    the command's flags and its field docstrings their help. From Python,
    `seqgen.evaluation.eval_options` builds one with the task's generation defaults.
    """

    eval_config: ClassVar[type]

    @staticmethod
    @abstractmethod
    def evaluate(config: Any) -> dict[str, Any]:
        """Score, print a table, return the report."""


class HasMBR(ABC):
    """Minimum Bayes risk decoding (`--mbr_samples N`) by a task-specific similarity."""

    @abstractmethod
    def mbr_similarity(self) -> Callable[[Any, Any], float]:
        """`similarity(output, other)`, higher for closer outputs (e.g. ROUGE); a
        `Similarity` where a whole group of samples scores faster than pair by pair."""


class Similarity(ABC):
    """A minimum Bayes risk utility that can score a group of candidates at once: N samples
    make N(N-1) pairs, so a subclass whose `matrix` computes each candidate's statistics once
    (and the pairs as array operations) saves most of the work; it must return exactly what
    calling it pair by pair returns, or the consensus could change."""

    @abstractmethod
    def __call__(self, output: Any, other: Any) -> float:
        """The similarity of `output` to `other`, higher for closer outputs."""

    def matrix(self, candidates: Sequence[Any]) -> list[list[float]]:
        """`[i][j] = self(candidates[i], candidates[j])` for i != j (the diagonal is unused)."""
        return pairwise(self, candidates)


def pairwise(
    similarity: Callable[[Any, Any], float], candidates: Sequence[Any]
) -> list[list[float]]:
    """`[i][j] = similarity(candidates[i], candidates[j])`, one pair at a time; 0 on the
    diagonal."""
    return [
        [similarity(c, other) if i != j else 0.0 for j, other in enumerate(candidates)]
        for i, c in enumerate(candidates)
    ]


@dataclass(frozen=True)
class DatasetBuilder:
    """`seqgen data NAME`: `build(config)` writes a dataset; `config` is a dataclass whose
    fields are the command's flags (its docstring is the command's description)."""

    config: type
    build: Callable[[Any], None]


class BuildsDatasets:
    """A task with dataset builders, run as `seqgen data NAME ...`, and the datasets its
    recipes use, fetched by `seqgen data get NAME`."""

    data_builders: ClassVar[dict[str, DatasetBuilder]] = {}
    datasets: ClassVar[dict[str, RemoteDataset]] = {}


class SamplesText(ABC):
    """A task whose training text can be sampled for a tokenizer without loading it all
    (`seqgen tokenizer train` on a corpus larger than memory)."""

    @abstractmethod
    def tokenizer_sample(self, max_lines: int) -> Iterable[str]:
        """About `max_lines` lines of training text, spread over the corpus, streamed."""


class GeneratesFiles(ABC):
    """A task whose outputs are files (music: MIDI), with generation options of its own.

    `seqgen generate` adds the fields of the dataclass `generate_options` to its flags and
    runs the shared `Generator`: prompt ids from `prompt`, then `prepare`, generation,
    and `write`.
    """

    generate_options: ClassVar[type]
    output_suffix: ClassVar[str] = ""
    """The output file's suffix (e.g. `.mid`), for outputs that a program names itself."""
    extra_files: ClassVar[dict[str, str]] = {}
    """Fields of `generate_options` that name extra files to write, with their suffix (music:
    `piano_roll` .png, `wav` .wav): `seqgen serve` fills them with paths of its own."""
    local_files: ClassVar[tuple[str, ...]] = ()
    """Fields of `generate_options` that read a file of the machine that generates (music:
    `soundfont`): `seqgen serve` refuses them in requests, which must not name server files."""

    @abstractmethod
    def prepare(
        self, ids: list[int], options: Any, settings: dict[str, Any]
    ) -> tuple[list[int], dict[str, Any]]:
        """The prompt ids and the generation settings that `options` change (e.g. the
        prompt cut to its first seconds, a stop once enough music is generated), given the
        `settings` chosen so far; raises ValueError for options that cannot work, before
        anything is generated."""

    @abstractmethod
    def write(
        self, ids: list[int], new: list[int], tokenizer: Tokenizer, options: Any, path: Path
    ) -> list[str]:
        """Write the output (the prompt `ids`, then the `new` ids) to `path`, and whatever
        else `options` ask for; return a line for each file written."""
