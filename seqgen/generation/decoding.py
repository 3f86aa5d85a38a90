"""What sampling and beam search share: the options of a call (`GenerationOptions`,
`Settings`), the rules that adjust each row's next-id logits (repetition penalty, banned ids,
min_new_tokens, the n-gram ban), the stop rules, the rows of one KV cache and the prompts
waiting for a place among them.

Shapes: B rows (prompts, samples or beams), V vocabulary size.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from functools import partial
from typing import Any, Protocol

import torch

from seqgen.config import check_types
from seqgen.errors import ConfigError
from seqgen.generation.rows import Rows
from seqgen.model import GPT
from seqgen.state import TokenState

NEG_INF = float("-inf")


@dataclass(kw_only=True)
class GenerationOptions:
    """What a user chooses about decoding. These fields are the flags of `seqgen generate` and
    of every evaluation that generates, with these docstrings as their help."""

    max_new_tokens: int = 100
    """Most new tokens per output."""
    min_new_tokens: int = 0
    """The end-of-sequence token cannot end an output before this many new tokens."""
    temperature: float = 1.0
    """0 is greedy decoding; otherwise the logits are divided by it and sampled."""
    top_k: int | None = None
    """Sample among the k most likely tokens only (0 or None: all)."""
    top_p: float | None = None
    """Sample from the smallest set of most likely tokens whose probability reaches top_p."""
    repetition_penalty: float = 1.0
    """CTRL's penalty: > 1 discourages tokens already in the row (prompt included)."""
    no_repeat_ngram_size: int = 0
    """Never generate an n-gram of this size twice in an output (0: off). The prompt is not
    counted, so an answer may still copy from it (e.g. a summary from its article)."""
    num_beams: int = 1
    """Beam search with this many beams when > 1 (ignores temperature, top_k and top_p)."""
    length_penalty: float = 1.0
    """Beam hypotheses are ranked by log-probability sum / length ** length_penalty."""
    early_stopping: bool = False
    """Beam search ends once num_beams hypotheses are finished, instead of when no running
    beam can still beat them."""

    def __post_init__(self) -> None:
        check_types(self, "options")  # values also come from JSON (seqgen serve) and Python
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.max_new_tokens < 0 or self.min_new_tokens < 0:
            raise ValueError("max_new_tokens and min_new_tokens must be >= 0")
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(
                f"min_new_tokens ({self.min_new_tokens}) > max_new_tokens ({self.max_new_tokens})"
            )
        if self.no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size}")
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {self.num_beams}")

    def generation_options(self) -> dict[str, Any]:
        """The `GenerationOptions` fields of this object (a subclass adds its own)."""
        return {f.name: getattr(self, f.name) for f in fields(GenerationOptions)}

    def check_mbr(self, samples: int) -> None:
        """Minimum Bayes risk over `samples` > 1 needs sampling: a ValueError otherwise."""
        if samples > 1 and (self.temperature <= 0 or self.num_beams != 1):
            raise ValueError("mbr_samples > 1 draws samples: give temperature > 0 and num_beams 1")


def recipe_defaults(options: dict[str, Any], task_defaults: dict[str, Any]) -> dict[str, Any]:
    """`options` checked as a training recipe's generation defaults (`RunConfig.generation`):
    `GenerationOptions` fields, and `mbr_samples` (which `generate` and `evaluate` take)."""
    known = {f.name for f in fields(GenerationOptions)}
    for key in options:
        if key not in known | {"mbr_samples"}:
            names = ", ".join(sorted(known | {"mbr_samples"}))
            raise ConfigError(f"generation.{key}: not a generation option ({names})")
    samples = options.get("mbr_samples", 1)
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise ConfigError(f"generation.mbr_samples must be an integer >= 1, got {samples!r}")
    chosen = {k: v for k, v in {**task_defaults, **options}.items() if k in known}
    try:
        merged = GenerationOptions(**chosen)
    except (ValueError, ConfigError) as err:
        raise ConfigError(
            f"generation: {err}, with the task's defaults under the recipe's "
            f"({', '.join(f'{k}={v}' for k, v in task_defaults.items())})"
        ) from None
    try:
        merged.check_mbr(samples)
    except ValueError as err:
        raise ConfigError(f"generation.{err}") from None
    return dict(options)


class LogitsProcessor(Protocol):
    """A rule on one row's next-id logits; `Settings.processor` makes one per row from its
    prompt. At each step it is called with the row's new ids so far (one more each time) and
    the row's (V,) logits, and returns them adjusted (-inf: the row may not take that id). It
    may keep state from the ids it has seen; `copy()` gives an independent one at the same
    point, for a beam that branches."""

    def __call__(self, ids: Sequence[int], logits: torch.Tensor) -> torch.Tensor: ...

    def copy(self) -> LogitsProcessor: ...


@dataclass(kw_only=True)
class Settings(GenerationOptions):
    """Generation options, accepted as keyword arguments by `generate` and `stream`: the
    user's `GenerationOptions` and what the program sets."""

    eos_id: int | Sequence[int] | None = None
    """Id(s) that end a row; never part of the output."""
    stop: Sequence[Sequence[int]] = ()
    """Id sequences that end a row when generated; cut from the output."""
    stop_fn: Callable[[list[int]], bool] | None = None
    """Called with a row's new ids after each token; True ends the row (e.g. a stop string)."""
    window_keep: int | None = None
    """Past the context, re-prefill the last window_keep tokens (default: 3/4 of block_size)."""
    processor: Callable[[list[int]], LogitsProcessor] | None = None
    """Called with each row's prompt: the row's `LogitsProcessor` (e.g. the music task's
    note rules, which ban releasing a note that is not sounding)."""
    state: TokenState | None = None
    """The task's token state, for a model that reads one (`ModelConfig.state_size`)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.stop = tuple(tuple(s) for s in self.stop)
        if any(len(s) == 0 for s in self.stop):
            raise ValueError("stop sequences must not be empty")
        self.eos_ids = (self.eos_id,) if isinstance(self.eos_id, int) else tuple(self.eos_id or ())


def adjust_logits(
    logits: torch.Tensor,
    seen: torch.Tensor | None,
    settings: Settings,
    rows: Sequence[tuple[Sequence[int], Sequence[LogitsProcessor]]],
):
    """Repetition penalty, each row's processors (the n-gram ban, the task's rules) and
    min_new_tokens, on (B, V) logits, for rows that share `settings`; rows[b]: row b's new
    ids and processors."""
    if seen is not None:
        logits = penalise_repeats(logits, seen, settings.repetition_penalty)
    logits = apply_processors(logits, rows)
    if settings.min_new_tokens and settings.eos_ids:
        early = {
            row: settings.eos_ids
            for row, (ids, _) in enumerate(rows)
            if len(ids) < settings.min_new_tokens
        }
        logits = ban_early_eos(logits, early)
    return logits


def penalise_repeats(
    logits: torch.Tensor, seen: torch.Tensor, penalty: float | torch.Tensor
) -> torch.Tensor:
    """CTRL's repetition penalty on the (B, V) logits of the ids `seen` (B, V) in each row;
    `penalty`: one for every row, or (B, 1)."""
    return torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)


def apply_processors(
    logits: torch.Tensor, rows: Sequence[tuple[Sequence[int], Sequence[LogitsProcessor]]]
) -> torch.Tensor:
    """Each row's processors, in order, on its (V,) logits; rows[b]: row b's new ids and
    processors."""
    if not any(processors for _, processors in rows):
        return logits
    logits = logits.clone()
    for row, (ids, processors) in enumerate(rows):
        for processor in processors:
            logits[row] = processor(ids, logits[row])
    return logits


def ban_early_eos(logits: torch.Tensor, early: dict[int, Sequence[int]]) -> torch.Tensor:
    """-inf at the end-of-sequence ids `early[row]` of each row that is still short of its
    min_new_tokens."""
    if not early:
        return logits
    logits = logits.clone()
    for row, eos_ids in early.items():
        logits[row, list(eos_ids)] = NEG_INF
    return logits


class NgramBan:
    """`no_repeat_ngram_size` as a `LogitsProcessor`: bans the ids that would complete an
    n-gram already among the row's new ids (the prompt does not count). Each n-gram's last
    id is filed under its first n - 1 as the row grows, so nothing is rescanned."""

    def __init__(self, n: int, prompt: list[int]) -> None:
        self.n = n
        self.ids: list[int] = []
        self.ends: dict[tuple[int, ...], list[int]] = {}

    def __call__(self, ids: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        for token in ids[len(self.ids) :]:
            self.ids.append(token)
            if len(self.ids) >= self.n:
                key = tuple(self.ids[len(self.ids) - self.n : -1])
                self.ends.setdefault(key, []).append(token)
        last = self.ids[len(self.ids) - self.n + 1 :] if self.n > 1 else []
        banned = self.ends.get(tuple(last), [])
        if banned:
            logits[banned] = NEG_INF
        return logits

    def copy(self) -> NgramBan:
        twin = NgramBan(self.n, [])
        twin.ids, twin.ends = list(self.ids), {k: list(v) for k, v in self.ends.items()}
        return twin


def processor_makers(settings: Settings) -> list[Callable[[list[int]], LogitsProcessor]]:
    """What makes each row's processors from its prompt: the n-gram ban, the caller's."""
    makers: list[Callable[[list[int]], LogitsProcessor]] = []
    if settings.no_repeat_ngram_size:
        makers.append(partial(NgramBan, settings.no_repeat_ngram_size))
    if settings.processor is not None:
        makers.append(settings.processor)
    return makers


def ends_row(new: list[int], settings: Settings) -> bool:
    """Whether `new` ends with a stop sequence (cut off here) or stop_fn says to stop."""
    for sequence in settings.stop:
        if tuple(new[-len(sequence) :]) == sequence:
            del new[-len(sequence) :]
            return True
    return settings.stop_fn is not None and settings.stop_fn(new)


class Waiting:
    """Prompts (or requests) waiting for a place among at most `most` running: a few are
    admitted at once (one prefill for several), all when none runs."""

    def __init__(self, most: int, waiting: Sequence[Any] = ()) -> None:
        self.queue = deque(waiting)
        self.most, self.refill_at = most, max(1, most // 8)

    def __bool__(self) -> bool:
        return bool(self.queue)

    def __len__(self) -> int:
        return len(self.queue)

    def add(self, item: Any) -> None:
        self.queue.append(item)

    def remove(self, item: Any) -> None:
        self.queue.remove(item)

    def admitted(self, running: int) -> list[Any]:
        """The waiting to start now, beside `running` others."""
        free = min(self.most - running, len(self.queue))
        if free < 1 or running and free < min(self.refill_at, len(self.queue)):
            return []
        return [self.queue.popleft() for _ in range(free)]


def joined(logits: torch.Tensor | None, admitted: torch.Tensor) -> torch.Tensor:
    """The running rows' next logits, then the admitted rows'."""
    return admitted if logits is None else torch.cat([logits, admitted])


def rows_for(
    model: GPT,
    prompts: list[list[int]],
    limits: list[int],
    settings: Settings,
    most: int,
    share_prompts: bool = False,
) -> Rows:
    """Rows for these prompts and limits (see `Rows.fitting`); beams reorder rows every step,
    so only sampled rows share their prompts."""
    return Rows.fitting(
        model,
        prompts,
        limits,
        window_keep=settings.window_keep,
        state=settings.state,
        most_rows=most,
        share_prompts=share_prompts,
    )
