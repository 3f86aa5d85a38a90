"""A checkpoint ready to generate: `seqgen.load("runs/demo").generate("ROMEO:")`."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from seqgen import checkpoint
from seqgen.config import ModelConfig
from seqgen.cpu import fast_linears
from seqgen.devices import Precision, Quantize, inference_precision, resolve_device
from seqgen.errors import CheckpointError
from seqgen.generation.batch import Batch, Request, random_streams
from seqgen.generation.engine import checked_settings, generate, stream
from seqgen.generation.text import cut_at_stop, stop_check, text_pieces
from seqgen.quantize import QUANTIZATIONS, quantize_int8
from seqgen.registry import task_class
from seqgen.state import size_of
from seqgen.tasks import Similarity, Task, pairwise

PRECISIONS = {"32": torch.float32, "bf16": torch.bfloat16}


class Generator:
    """A loaded model with its tokenizer and task: prompts in, decoded outputs out.

    Attributes:
        model: the GPT, in eval mode, for inference only (on CPU its Linears run on the
            kernels timed fastest here at load, see `seqgen.cpu`, and its blocks' one-row
            decoding steps may run fused, see `seqgen.fused`; pass pack=False to keep
            nn.Linear and, unquantized, the blocks as written).
        linear_kernels: those kernels for one row, a few and many, or None for nn.Linear.
        tokenizer: the checkpoint's tokenizer.
        task: the task adapter that builds prompt ids and decodes outputs.
        meta: the checkpoint's config.json.
    """

    def __init__(
        self,
        loaded: checkpoint.Checkpoint,
        precision: Literal["32", "bf16"] = "32",
        pack: bool = True,
        quantize: Quantize = "none",
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if quantize not in QUANTIZATIONS:
            raise ValueError(
                f"quantize must be one of {', '.join(QUANTIZATIONS)}, got {quantize!r}"
            )
        self.model = loaded.model.to(PRECISIONS[precision])
        self.device = next(self.model.parameters()).device
        # the int8 kernel this machine runs fastest (seqgen.quantize), or None
        self.int8_kernel = quantize_int8(self.model) if quantize == "int8" else None
        self.linear_kernels = fast_linears(self.model) if pack else None
        self.tokenizer, self.meta, self.path = loaded.tokenizer, loaded.meta, loaded.path
        self.task = checkpoint_task(self.meta)
        self.state = self.task.token_state()
        if size_of(self.state) != self.model.config.state_size:
            raise CheckpointError(
                f"{self.path}: the model reads a token state of size "
                f"{self.model.config.state_size}, its {self.task.name} task "
                f"as configured gives {size_of(self.state)}"
            )

    def prompt_ids(self, prompt: Any) -> list[int]:
        return self.task.prompt(prompt, self.tokenizer)

    def generate(
        self, prompt: Any = "", *, num_samples: int = 1, stop: Sequence[str] = (), **options
    ) -> Any:
        """Decoded continuation(s) of `prompt`: one output, or a list when num_samples > 1.

        Args:
            num_samples: independent samples of the same prompt, generated as one batch.
            stop: strings that end the output (cut from it), for text tasks.
            **options: generation settings of `seqgen.generate` (temperature, top_k, ...);
                the checkpoint's defaults (`Task.decoding_defaults()`) fill in what is not
                given.
        """
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        ids = self.prompt_ids(prompt)
        options = self._options(stop, options, ids)
        if num_samples == 1:
            return self.text(generate(self.model, ids, **options), stop)
        outputs = generate(self.model, [ids] * num_samples, **options)
        return [self.text(out, stop) for out in outputs]

    def continue_ids(
        self, ids: list[int] | list[list[int]], **options
    ) -> list[int] | list[list[int]]:
        """The new ids after prompt `ids` (or after each of a batch of prompts), not decoded,
        for outputs that are more than the new ids, such as a MIDI file of prompt and
        continuation; options as for `generate`."""
        if ids and not isinstance(ids[0], int):
            options = self._options((), options)
            limits = self._limits(ids, options.pop("max_new_tokens", 100))
            return generate(self.model, ids, limits, **options)
        return generate(self.model, ids, **self._options((), options, ids))

    def generate_many(
        self,
        prompts: Sequence[Any],
        *,
        batch_size: int = 32,
        stop: Sequence[str] = (),
        on_done: Callable[[int], None] | None = None,
        **options,
    ) -> list[Any]:
        """Decoded outputs for many inputs, in order, each what a call for its prompt alone
        gives (`stop`: strings that end an output, for text tasks). Prompts are decoded by
        length, `batch_size` at a time: a sampled row that ends makes room for the next
        prompt at once (continuous batching), and under beam search each prompt's beams join
        its batch. A seeded call samples prompt i from the same
        stream whatever the batch size (`generate`'s sample ids are the prompts' indices).
        `on_done(n)` reports progress.

        `max_new_tokens` may be a function of a prompt's ids (e.g. proportional to its length).
        """
        ids = [self.prompt_ids(p) for p in prompts]
        options = self._options(stop, options)
        budget = options.pop("max_new_tokens", 100)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        if not order:
            return []
        batch = [ids[i] for i in order]
        done = (lambda _: on_done(1)) if on_done is not None else None
        new = generate(
            self.model,
            batch,
            self._limits(batch, budget),
            sample_ids=order,
            batch_size=batch_size,
            on_done=done,
            **options,
        )
        outputs: list[Any] = [None] * len(ids)
        for i, out in zip(order, new, strict=True):
            outputs[i] = self.text(out, stop)
        return outputs

    def generate_mbr(
        self,
        prompts: Sequence[Any],
        *,
        samples: int,
        similarity: Callable[[Any, Any], float],
        batch_size: int = 32,
        on_done: Callable[[int], None] | None = None,
        **options,
    ) -> list[Any]:
        """Minimum Bayes risk decoding: draw `samples` outputs per prompt and keep, for each,
        the one most similar to its other samples (the consensus), which maximizes the
        expected `similarity` (e.g. ROUGE or BLEU) under the model's own distribution.
        Beam search finds likely outputs; on a small model those are often bland or
        degenerate, while the consensus of samples keeps what most of them agree on.

        Args:
            samples: outputs drawn per prompt (cost: that many sampled generations).
            similarity: `similarity(output, other)`, higher for closer outputs.
            on_done: progress, called with the number of samples finished (of
                len(prompts) * samples).
            **options: `generate_many` settings; sampling (temperature > 0), one beam.
        """
        if samples < 2:
            raise ValueError(f"MBR needs at least 2 samples per prompt, got {samples}")
        options = self._defaults(options)
        if options.get("temperature", 1.0) <= 0 or options.get("num_beams", 1) > 1:
            raise ValueError("MBR draws samples: set temperature > 0 and num_beams 1")
        repeated = [prompt for prompt in prompts for _ in range(samples)]
        outputs = self.generate_many(repeated, batch_size=batch_size, on_done=on_done, **options)
        groups = [outputs[start : start + samples] for start in range(0, len(outputs), samples)]
        return [group[consensus(group, similarity)] for group in groups]

    def request(
        self,
        prompt: Any = "",
        *,
        ids: list[int] | None = None,
        stop: Sequence[str] = (),
        seed: int | None = None,
        sample: int = 0,
        logprobs: int | None = None,
        **options,
    ) -> Request:
        """`prompt` (or its `ids`) as a `Request` for a `Batch` that decodes many at once
        (`seqgen serve`): its output is what `generate(prompt, stop=stop, seed=seed,
        **options)` (or `continue_ids(ids, ...)`) gives with one beam, or with `sample` i what
        sample i of `num_samples` gives, whatever shares the batch. Decode its new ids with
        `text(request.output, stop)`."""
        ids = self.prompt_ids(prompt) if ids is None else list(ids)
        options = self._options(stop, options, ids)
        settings = checked_settings(self.model, [ids], options.pop("max_new_tokens", 100), options)
        if settings.num_beams > 1:
            raise ValueError("a batched request decodes one beam: num_beams must be 1")
        return Request(
            ids, settings, settings.max_new_tokens, random_streams(seed, [sample])[0], logprobs
        )

    def file_settings(
        self, ids: list[int], options: dict[str, Any], file_options: Any, most: int | None = None
    ) -> tuple[list[int], dict[str, Any]]:
        """The prompt ids and generation settings of a task's file output (music): the task
        prepares them from `options` and its `file_options`. Raises ValueError for options
        that cannot work, or that would take more than `most` tokens."""
        ids, changed = self.task.prepare(ids, file_options, options)  # sets every option
        settings = {**options, **changed}
        if most is not None and settings["max_new_tokens"] > most:
            raise ValueError(
                f"this output may take up to {settings['max_new_tokens']:,} tokens; "
                f"this server allows {most:,} (ask for less)"
            )
        return ids, settings

    def batch(self, most: int) -> Batch:
        """An open `Batch` of at most `most` rows for `request`s of this model."""
        return Batch.open(self.model, most, self.state)

    def text(self, ids: list[int], stop: Sequence[str] = ()) -> Any:
        """The task's output for new ids, cut at the first stop string."""
        output = self.task.decode(ids, self.tokenizer)
        return cut_at_stop(output, stop) if stop else output

    def stream(self, prompt: Any = "", *, stop: Sequence[str] = (), **options) -> Iterator[str]:
        """Text pieces as they are produced (for text tasks); joined they equal `generate`."""
        ids = self.prompt_ids(prompt)
        tokens = stream(self.model, ids, **self._options(stop, options, ids))
        return text_pieces(tokens, self.text, stop)

    def _defaults(self, options: dict) -> dict:
        # a recipe's mbr_samples is for `generate_mbr`'s callers (seqgen generate, evaluate)
        defaults = {k: v for k, v in self.task.decoding_defaults().items() if k != "mbr_samples"}
        return {**defaults, **options}

    def _options(self, stop: Sequence[str], options: dict, ids: list[int] | None = None) -> dict:
        options = {"eos_id": self.tokenizer.eos_id, "state": self.state, **self._defaults(options)}
        if ids is not None:
            options["max_new_tokens"] = min(options.get("max_new_tokens", 100), self._room(ids))
        if stop:
            if any(not s for s in stop):
                raise ValueError("stop strings must not be empty")
            stopped, given = stop_check(stop, self.text), options.get("stop_fn")
            options["stop_fn"] = (
                stopped if given is None else (lambda ids: given(ids) or stopped(ids))
            )
        return options

    def _limits(
        self, prompts: list[list[int]], budget: int | Callable[[list[int]], int]
    ) -> list[int]:
        """max_new_tokens of each prompt: `budget` (or `budget(prompt ids)`), within its room."""
        wanted = budget if callable(budget) else (lambda _: budget)
        return [min(wanted(prompt), self._room(prompt)) for prompt in prompts]

    def _room(self, ids: list[int]) -> float:
        """Most new tokens for a prompt: unbounded where outputs continue it (a sliding window
        goes past the context); an answer (a translation, a summary) must see its whole
        prompt, so it stops at the end of the context."""
        if self.task.continues_prompt:
            return float("inf")
        return max(1, self.model.config.block_size - len(ids))

    def states(self, ids: Sequence[int]) -> np.ndarray | None:
        """(T, state size): the token state after each of `ids` (a whole sequence, from its
        start), for a model that reads one; else None."""
        if self.state is None:
            return None
        return self.state.sequence(np.asarray(ids, dtype=np.int64))


def consensus(candidates: Sequence[Any], similarity: Callable[[Any, Any], float]) -> int:
    """Index of the candidate with the highest total similarity to the others (the first
    on ties): the minimum Bayes risk choice when the candidates are samples. A `Similarity`
    scores the whole group at once."""
    scores = (
        similarity.matrix(candidates)
        if isinstance(similarity, Similarity)
        else pairwise(similarity, candidates)
    )
    totals = [sum(row[j] for j in range(len(row)) if j != i) for i, row in enumerate(scores)]
    return max(range(len(candidates)), key=lambda i: (totals[i], -i))


def checkpoint_task(meta: dict[str, Any]) -> Task:
    """The task of a checkpoint's config.json, configured as it was trained (no weights
    are read)."""
    block_size = ModelConfig.from_dict(meta["model"]).block_size
    return task_class(meta["task"]).from_options(
        meta.get("task_options", {}), block_size, meta.get("generation")
    )


def task_of(path: str | Path) -> Task:
    """The task of a checkpoint (or run directory), configured as it was trained."""
    return checkpoint_task(checkpoint.read_meta(checkpoint.resolve(path)))


def load(
    path: str | Path,
    task: str | None = None,
    precision: Precision = "auto",
    device: str = "auto",
    pack: bool = True,
    quantize: Quantize = "none",
) -> Generator:
    """Load a checkpoint (or a run directory's final/) for generation on `device` (auto: the
    GPU where there is one; see `seqgen.devices`), in `precision` (auto: bf16 on a GPU that
    has it, else 32), with `quantize` int8 its Linear weights as int8 (`seqgen.quantize`)."""
    placed = resolve_device(device)
    loaded = checkpoint.load(path, task=task, map_location=str(placed))
    return Generator(loaded, inference_precision(precision, placed), pack, quantize)
