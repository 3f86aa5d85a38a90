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
from seqgen.model import GPT
from seqgen.rows import Rows
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


class Constraint(Protocol):
    """What a row may generate next, as its ids arrive (`Settings.constraint`)."""

    def add(self, token: int) -> None:
        """The row has generated `token`."""

    def banned(self) -> list[int]:
        """The ids the row may not take next."""

    # A constraint may also define `shared() -> list[int]`: ids among which the model's
    # probability stays. What it puts on the banned ones among them goes to the allowed ones,
    # in proportion, rather than to the whole vocabulary (`row_bans`).


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
    constraint: Callable[[list[int]], Constraint] | None = None
    """Called with each row's prompt: the object it returns is told each new id and names
    the ids the row may not take next (e.g. releasing a note that is not sounding)."""
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
    n_new: int | list[int],
    banned: list[list[int]] | None,
    shared: list[list[int]] | None = None,
):
    """Repetition penalty, banned ids (repeated n-grams, constraints) and min_new_tokens, on
    (B, V) logits, for rows that share `settings`; banned[b] are the ids row b may not take,
    shared[b] the ids among which row b keeps the model's probability (`row_bans`); n_new:
    the new ids so far, of every row or of each."""
    if seen is not None:
        logits = penalise_repeats(logits, seen, settings.repetition_penalty)
    if banned is not None:
        logits = ban_ids(logits, banned, shared)
    if settings.min_new_tokens and settings.eos_ids:
        counts = n_new if isinstance(n_new, list) else [n_new] * len(logits)
        early = {
            row: settings.eos_ids for row, n in enumerate(counts) if n < settings.min_new_tokens
        }
        logits = ban_early_eos(logits, early)
    return logits


def penalise_repeats(
    logits: torch.Tensor, seen: torch.Tensor, penalty: float | torch.Tensor
) -> torch.Tensor:
    """CTRL's repetition penalty on the (B, V) logits of the ids `seen` (B, V) in each row;
    `penalty`: one for every row, or (B, 1)."""
    return torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)


def ban_ids(
    logits: torch.Tensor, banned: list[list[int]], shared: list[list[int]] | None = None
) -> torch.Tensor:
    """-inf at each row's banned ids; shared[b]: the ids among which row b keeps the model's
    probability (`row_bans`)."""
    logits = logits.clone()
    for row, ids in enumerate(banned):
        if ids:
            if shared and shared[row]:
                _pass_on(logits[row], ids, shared[row])
            logits[row, ids] = NEG_INF
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


def row_bans(rules: Sequence[Constraint]) -> tuple[list[int], list[int]]:
    """A row's banned ids from its constraints, and the ids among which they keep the
    model's probability (the constraints' optional `shared`)."""
    banned = [i for rule in rules for i in rule.banned()]
    shared = [i for rule in rules if hasattr(rule, "shared") for i in rule.shared()]
    return banned, shared


def _pass_on(logits: torch.Tensor, banned: list[int], shared: list[int]) -> None:
    """Raise the (V,) logits of the allowed ids of `shared` so that, once `banned` is
    removed, they hold all the probability the model gave to `shared`, in their own
    proportions; every other id keeps its probability."""
    group = torch.tensor(shared, device=logits.device)
    lost = torch.isin(group, torch.tensor(banned, device=logits.device))
    heirs, gone = group[~lost], group[lost]
    if len(heirs) and len(gone):
        kept = torch.logsumexp(logits[heirs].float(), 0)
        if not torch.isfinite(kept):  # nothing allowed had any probability to scale
            return
        total = torch.logaddexp(kept, torch.logsumexp(logits[gone].float(), 0))
        logits[heirs] += (total - kept).to(logits.dtype)


class NgramBan:
    """`no_repeat_ngram_size` as a `Constraint`: the ids that would complete an n-gram already
    among the row's new ids (the prompt does not count). Each n-gram's last id is filed under
    its first n - 1 as the row grows, so nothing is rescanned."""

    def __init__(self, n: int, prompt: list[int]) -> None:
        self.n = n
        self.ids: list[int] = []
        self.ends: dict[tuple[int, ...], list[int]] = {}

    def add(self, token: int) -> None:
        self.ids.append(token)
        if len(self.ids) >= self.n:
            self.ends.setdefault(tuple(self.ids[len(self.ids) - self.n : -1]), []).append(token)

    def banned(self) -> list[int]:
        last = self.ids[len(self.ids) - self.n + 1 :] if self.n > 1 else []
        return self.ends.get(tuple(last), [])


def constraint_makers(settings: Settings) -> list[Callable[[list[int]], Constraint]]:
    """What bans ids as a row grows: the n-gram ban and the caller's constraint."""
    makers: list[Callable[[list[int]], Constraint]] = []
    if settings.no_repeat_ngram_size:
        makers.append(partial(NgramBan, settings.no_repeat_ngram_size))
    if settings.constraint is not None:
        makers.append(settings.constraint)
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
