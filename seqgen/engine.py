"""Generation for every task: KV-cached sampling and beam search, batched, streamed, and
unbounded in length (a sliding window re-prefills the most recent tokens past the context).

Shapes: B rows (prompts, samples or beams), V vocabulary size.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from functools import partial
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from seqgen.config import check_types
from seqgen.model import GPT
from seqgen.rows import Rows, holes_filled
from seqgen.state import TokenState, size_of

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


def generate(
    model: GPT,
    prompt_ids: Sequence[int] | Sequence[Sequence[int]],
    max_new_tokens: int | Sequence[int] = 100,
    *,
    seed: int | None = None,
    sample_ids: Sequence[int] | None = None,
    batch_size: int | None = None,
    on_token: Callable[[int, int], None] | None = None,
    on_done: Callable[[int], None] | None = None,
    **options,
) -> list[int] | list[list[int]]:
    """Continue one prompt (a list of ids) or a batch of prompts (a list of lists).

    Returns the new ids only (a list, or one list per prompt), without eos or a matched stop
    sequence. Each row of a batch stops on its own and has its own window past the context,
    so a batch returns what separate calls would.

    Args:
        max_new_tokens: most new ids, for every prompt or one number per prompt.
        seed: seeds sampling, so a seeded call is reproducible. Each row draws from its own
            random stream, fixed by the seed and the row's sample id, so what a row samples
            does not depend on which rows share its batch.
        sample_ids: each row's sample id (default 0, 1, ...): `generate_many` passes each
            prompt's index, so a prompt samples the same whatever batch it lands in.
        batch_size: most prompts decoded at once (default: all). When sampling, a waiting
            prompt takes the place of each row that ends; beam searches run in batches.
        on_token: called as (row, id) for each new id as it is produced.
        on_done: called with a row's index once its output is complete.
        **options: see `Settings` (temperature, top_k, top_p, num_beams, eos_id, stop, ...).
    """
    if hasattr(prompt_ids, "tolist"):  # a torch tensor or numpy array, (T,) or (B, T)
        prompt_ids = prompt_ids.tolist()
    batched = len(prompt_ids) > 0 and not isinstance(prompt_ids[0], int)
    prompts = [list(p) for p in prompt_ids] if batched else [list(prompt_ids)]
    limits = _limits(max_new_tokens, len(prompts))
    settings = _settings(model, prompts, max(limits, default=0), options)
    streams = _streams(seed, range(len(prompts)) if sample_ids is None else sample_ids)
    if len(streams) != len(prompts):
        raise ValueError(f"sample_ids: give {len(prompts)} ids, one per prompt")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    outputs: list[list[int]] = [[] for _ in prompts]
    for row, token in _events(model, prompts, settings, streams, outputs, limits, batch_size):
        if token is None:
            if on_done is not None:
                on_done(row)
        elif on_token is not None:
            on_token(row, token)
    return outputs if batched else outputs[0]


def stream(
    model: GPT, prompt_ids: Sequence[int], max_new_tokens: int = 100, *,
    seed: int | None = None, **options,
) -> Iterator[int]:  # fmt: skip
    """Yield the new ids of one prompt as they are produced; options as for `generate`.

    With beam search the ids come at the end, once the best hypothesis is known.
    """
    prompts = [list(prompt_ids)]
    settings = _settings(model, prompts, max_new_tokens, options)  # raises before the first id
    limits = [settings.max_new_tokens]
    events = _events(model, prompts, settings, _streams(seed, [0]), [[]], limits, None)
    return (token for _, token in events if token is not None)


def _limits(max_new_tokens: int | Sequence[int], count: int) -> list[int]:
    """max_new_tokens for each of `count` prompts."""
    if isinstance(max_new_tokens, int):
        return [max_new_tokens] * count
    limits = [int(n) for n in max_new_tokens]
    if len(limits) != count or any(n < 0 for n in limits):
        raise ValueError(f"max_new_tokens: give {count} numbers >= 0, one per prompt")
    return limits


def _settings(model: GPT, prompts: list[list[int]], max_new_tokens: int, options) -> Settings:
    settings = Settings(max_new_tokens=max_new_tokens, **options)
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("a prompt is empty: start it with at least one id (e.g. bos or eos)")
    vocab = model.config.vocab_size
    if any(not isinstance(i, int) or not 0 <= i < vocab for p in prompts for i in p):
        raise ValueError(f"a prompt holds something other than an id below {vocab}")
    if size_of(settings.state) != model.config.state_size:
        raise ValueError(f"the model reads a token state of size {model.config.state_size}, "
                         f"the settings give one of size {size_of(settings.state)}")  # fmt: skip
    block = model.config.block_size
    if settings.window_keep is not None and not 0 < settings.window_keep < block:
        raise ValueError(f"window_keep must be in (0, {block}), got {settings.window_keep}")
    return settings


def _events(model, prompts, settings, streams, outputs, limits,
            batch_size: int | None) -> Iterator[tuple[int, int | None]]:  # fmt: skip
    """(row, id) for each new id, appending each row's ids to outputs[row] (at most
    limits[row] of them), and (row, None) once a row is complete.

    Inference mode is entered for each step only, never held across a yield, so the code that
    consumes the ids (a streaming loop) runs in the caller's own grad mode.
    """
    if settings.num_beams > 1:
        steps = _beam_search(model, prompts, settings, outputs, limits, batch_size)
    else:
        steps = _sample(model, prompts, settings, streams, outputs, limits, batch_size)
    while True:
        with torch.inference_mode():
            event = next(steps, None)
        if event is None:
            return
        yield event


def _streams(seed: int | None, sample_ids: Sequence[int]) -> list[np.random.Generator]:
    """One random stream per row, from the seed (a fresh one if None) and the row's id."""
    base = seed % 2**64 if seed is not None else int(np.random.SeedSequence().entropy)
    return [np.random.default_rng([base, int(i)]) for i in sample_ids]


def _adjust(logits: torch.Tensor, seen: torch.Tensor | None, settings: Settings,
            n_new: int | list[int], banned: list[list[int]] | None):  # fmt: skip
    """Repetition penalty, banned ids (repeated n-grams, constraints) and min_new_tokens, on
    (B, V) logits; banned[b] are the ids row b may not take; n_new: the new ids so far, of
    every row or of each."""
    if seen is not None:
        p = settings.repetition_penalty
        logits = torch.where(seen, torch.where(logits > 0, logits / p, logits * p), logits)
    if banned is not None:
        logits = logits.clone()
        for row, ids in enumerate(banned):
            if ids:
                logits[row, ids] = NEG_INF
    if settings.min_new_tokens and settings.eos_ids:
        counts = n_new if isinstance(n_new, list) else [n_new] * len(logits)
        early = [row for row, n in enumerate(counts) if n < settings.min_new_tokens]
        if early:
            logits = logits.clone()
            logits[torch.tensor(early)[:, None], list(settings.eos_ids)] = NEG_INF
    return logits


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


def _constraints(settings: Settings) -> list[Callable[[list[int]], Constraint]]:
    """What bans ids as a row grows: the n-gram ban and the caller's constraint."""
    makers: list[Callable[[list[int]], Constraint]] = []
    if settings.no_repeat_ngram_size:
        makers.append(partial(NgramBan, settings.no_repeat_ngram_size))
    if settings.constraint is not None:
        makers.append(settings.constraint)
    return makers


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Set logits outside the top-k and outside the top-p nucleus to -inf. logits: (B, V)."""
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, NEG_INF)
    if top_p is not None and top_p < 1.0:
        logits = _nucleus(logits, top_p)
    return logits


def _nucleus(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches top_p (the best
    always stays); -inf elsewhere. The set is every token above the least likely one kept and
    as many of the tokens tied with it as a full sort would keep, the first in id order."""
    probs = torch.softmax(logits.float(), dim=-1)
    ordered = _descending(probs)
    kept = (~_outside(ordered, top_p)).sum(dim=-1, keepdim=True)  # (B, 1), at least 1
    least = ordered.gather(-1, kept - 1)
    above = probs > least
    tied = probs == least
    tied_kept = tied & (tied.cumsum(dim=-1) <= kept - above.sum(dim=-1, keepdim=True))
    return logits.masked_fill(~(above | tied_kept), NEG_INF)


def _descending(probs: torch.Tensor) -> torch.Tensor:
    """Each row's values in descending order. On CPU numpy's vectorised sort of the values
    alone is ~10x torch.sort, which orders the indices too (this cost more than the rest of
    sampling on a flat distribution)."""
    if probs.device.type != "cpu":
        return probs.sort(dim=-1, descending=True).values
    return torch.from_numpy(np.ascontiguousarray(np.sort(probs.numpy(), axis=-1)[:, ::-1]))


def _outside(ordered: torch.Tensor, top_p: float) -> torch.Tensor:
    """For probabilities in descending order: whether the tokens ranked above each already
    reach top_p."""
    return ordered.cumsum(dim=-1) - ordered >= top_p


def _draw(probs: torch.Tensor, streams: list[np.random.Generator]) -> torch.Tensor:
    """One id per row of `probs` (B, V), by inverse transform sampling with row b's uniform
    from streams[b] alone. Returns (B,)."""
    uniforms = torch.tensor([1.0 - stream.random() for stream in streams],  # in (0, 1]
                            dtype=torch.float64, device=probs.device)  # fmt: skip
    cdf = probs.double().cumsum(dim=-1)
    ids = torch.searchsorted(cdf, (uniforms * cdf[:, -1])[:, None])[:, 0]
    return ids.clamp(max=probs.shape[-1] - 1)


def _ends_row(new: list[int], settings: Settings) -> bool:
    """Whether `new` ends with a stop sequence (cut off here) or stop_fn says to stop."""
    for sequence in settings.stop:
        if tuple(new[-len(sequence) :]) == sequence:
            del new[-len(sequence) :]
            return True
    return settings.stop_fn is not None and settings.stop_fn(new)


def _sample(model, prompts, settings, streams, outputs, limits,
            batch_size: int | None) -> Iterator[tuple[int, int]]:  # fmt: skip
    """Sampled or greedy rows, at most `batch_size` at once: a row that ends leaves the batch
    and a waiting prompt takes its place (continuous batching), so a batch runs full rather
    than as long as its longest row."""
    most = min(batch_size or len(prompts), len(prompts))
    rows = _rows(model, prompts, limits, settings, most, share_prompts=True)
    sequences = [list(p) for p in prompts]
    waiting = _Waiting(limits, most)
    yield from ((i, None) for i in waiting.empty)
    live: list[int] = []  # the prompt of each cache row
    makers = _constraints(settings)
    rules: dict[int, list[Constraint]] = {}
    penalised = settings.repetition_penalty != 1.0
    seen = torch.zeros(0, model.config.vocab_size, dtype=torch.bool, device=rows.device)
    logits = None
    while waiting or live:
        new = waiting.admitted(len(live))
        if new:
            logits = _joined(logits, rows.admit([sequences[i] for i in new]))
            live += new
            for i in new:
                rules[i] = [make(prompts[i]) for make in makers]
            if penalised:
                marks = torch.zeros(len(new), model.config.vocab_size, dtype=torch.bool)
                for slot, i in enumerate(new):
                    marks[slot, prompts[i]] = True
                seen = torch.cat([seen, marks.to(rows.device)])
        banned = None
        if makers:
            banned = [[i for rule in rules[row] for i in rule.banned()] for row in live]
        logits = _adjust(logits, seen if penalised else None, settings,
                         [len(outputs[row]) for row in live], banned)  # fmt: skip
        if settings.temperature == 0:
            tokens = logits.argmax(dim=-1)
        else:
            logits = filter_logits(logits / settings.temperature, settings.top_k, settings.top_p)
            tokens = _draw(torch.softmax(logits, -1), [streams[row] for row in live])
        finished = []
        for slot, (row, token) in enumerate(zip(live, tokens.tolist(), strict=True)):
            if token in settings.eos_ids:
                finished.append(slot)
                continue
            outputs[row].append(token)
            sequences[row].append(token)
            for rule in rules[row]:
                rule.add(token)
            if penalised:
                seen[slot, token] = True
            yield row, token
            if _ends_row(outputs[row], settings) or len(outputs[row]) >= limits[row]:
                finished.append(slot)
        for slot in finished:
            del rules[live[slot]]
            yield live[slot], None
        logits = None
        if finished:
            order = rows.drop(finished)
            live, tokens = [live[i] for i in order.tolist()], tokens[order]
            seen = seen[order] if penalised else seen
        if live:
            logits = rows.step(tokens, [sequences[row] for row in live])


class _Waiting:
    """Prompts waiting for a place among at most `most` running: a few are admitted at once
    (one prefill for several), all when none runs. Prompts with no new ids are `empty`."""

    def __init__(self, limits: list[int], most: int) -> None:
        self.queue = deque(i for i, n in enumerate(limits) if n > 0)
        self.empty = [i for i, n in enumerate(limits) if n == 0]
        self.most, self.refill_at = most, max(1, most // 8)

    def __bool__(self) -> bool:
        return bool(self.queue)

    def admitted(self, running: int) -> list[int]:
        """The prompts to start now, beside `running` others."""
        free = min(self.most - running, len(self.queue))
        if free < 1 or running and free < min(self.refill_at, len(self.queue)):
            return []
        return [self.queue.popleft() for _ in range(free)]


def _joined(logits: torch.Tensor | None, admitted: torch.Tensor) -> torch.Tensor:
    """The running rows' next logits, then the admitted rows'."""
    return admitted if logits is None else torch.cat([logits, admitted])


def _rows(model: GPT, prompts: list[list[int]], limits: list[int], settings: Settings,
          most: int, share_prompts: bool = False) -> Rows:  # fmt: skip
    """Rows for these prompts and limits (see `Rows.fitting`); beams reorder rows every step,
    so only sampled rows share their prompts."""
    return Rows.fitting(model, prompts, limits, window_keep=settings.window_keep,
                        state=settings.state, most_rows=most, share_prompts=share_prompts)


def _beam_search(model, prompts, settings, outputs, limits,
                 batch_size: int | None) -> Iterator[tuple[int, int | None]]:  # fmt: skip
    """A beam search over each prompt, at most `batch_size` prompts' beams decoded together
    as rows of one KV cache; a waiting prompt's search starts as soon as one ends, and each
    search is what it would be alone. Events as `_events`, a search's ids once it ends."""
    most = min(batch_size or len(prompts), len(prompts))
    rows = _rows(model, prompts, limits, settings, most * settings.num_beams)
    waiting = _Waiting(limits, most)
    yield from ((i, None) for i in waiting.empty)
    searches: dict[int, _Search] = {}
    live: list[int] = []  # the searches whose beams are the cache's rows, in order
    owners: list[int] = []  # the search of each cache row
    logits = None
    while waiting or live:
        new = waiting.admitted(len(live))
        if new:
            logits = _joined(logits, rows.admit([prompts[i] for i in new]))
            for i in new:
                searches[i] = _Search(prompts[i], limits[i], settings.length_penalty,
                                      logits.device)  # fmt: skip
            live, owners = live + new, owners + new
        sources, first = {}, 0  # each running search's new rows, as rows of the cache now
        for i in live:
            width = len(searches[i].beams)
            parents = searches[i].advance(logits[first : first + width], settings)
            if parents:
                sources[i] = [first + row for row in parents]
            else:
                best = searches.pop(i).best()
                outputs[i].extend(best)
                yield from ((i, token) for token in best)
                yield i, None
            first += width
        live, logits = _refilled(live, sources), None
        keep = [row for i in live for row in sources[i]]
        new_owners = [i for i in live for _ in searches[i].beams]
        same = [t < len(owners) and owners[t] == i for t, i in enumerate(new_owners)]
        rows.select(torch.tensor(keep, dtype=torch.long, device=rows.device),
                    torch.tensor(same, dtype=torch.bool))  # fmt: skip
        owners = new_owners
        if live:
            beams = [(searches[i].prompt, beam) for i in live for beam in searches[i].in_rows()]
            tokens = torch.tensor([beam[-1] for _, beam in beams], device=rows.device)
            logits = rows.step(tokens, [prompt + beam for prompt, beam in beams])


def _refilled(order: list[int], running: dict[int, list[int]]) -> list[int]:
    """The searches of `order` still `running`, the last ones taking the places of those that
    ended, so that the others keep their cache rows (reordering rows copies them)."""
    return [order[place] for place in holes_filled([i in running for i in order])]


class _Search:
    """One prompt's beam search: its live beams (new ids; one cache row each), their
    log-probability sums, and the finished hypotheses with their normalised scores."""

    def __init__(self, prompt: list[int], limit: int, length_penalty: float,
                 device: torch.device) -> None:  # fmt: skip
        self.prompt, self.limit, self.length_penalty = prompt, limit, length_penalty
        self.beams: list[list[int]] = [[]]
        self.places = [0]  # the row of the search's block that holds each beam
        self.scores = torch.zeros(1, device=device)
        self.finished: list[tuple[float, list[int]]] = []
        self.step = 0  # the beams' length

    def advance(self, logits: torch.Tensor, settings: Settings) -> list[int]:
        """Choose the next beams from `logits` (one per row of the search's block, (n, V));
        returns, for each row of the new block, the row whose beam it continues, or nothing
        once the search is over."""
        k, step = settings.num_beams, self.step
        self.step += 1
        logits = logits[self.places]  # in the beams' order
        seen = None
        if settings.repetition_penalty != 1.0:
            seen = torch.zeros_like(logits, dtype=torch.bool)
            for b, beam in enumerate(self.beams):
                seen[b, self.prompt + beam] = True
        makers = _constraints(settings)
        banned = None
        if makers:
            banned = [[i for make in makers for i in _replayed(make, self.prompt, beam)]
                      for beam in self.beams]  # fmt: skip
        logprobs = F.log_softmax(_adjust(logits, seen, settings, step, banned), dim=-1)
        candidates = self.scores[:, None] + logprobs  # (n, V)
        vocab = logprobs.shape[1]
        chosen: list[tuple[float, int, list[int]]] = []  # (score, parent row, hypothesis)
        for rank, (score, index) in enumerate(_ranked(candidates, 2 * k)):
            if score == NEG_INF:
                break
            parent, token = divmod(index, vocab)
            if token in settings.eos_ids:
                if rank < k:  # an eos outside the top k would not have been chosen
                    length = len(self.beams[parent]) + 1
                    self.finished.append((self.normalised(score, length), self.beams[parent]))
                continue
            hypothesis = self.beams[parent] + [token]
            if _ends_row(hypothesis, settings):
                self.finished.append((self.normalised(score, len(hypothesis)), hypothesis))
                continue
            chosen.append((score, parent, hypothesis))
            if len(chosen) == k:
                break
        self.beams = [hypothesis for _, _, hypothesis in chosen]
        self.scores = torch.tensor([score for score, _, _ in chosen], device=logits.device)
        if not chosen or step == self.limit - 1:
            return []
        if _beams_done(self.finished, self.scores.max().item(), step + 1, settings, self.limit):
            self.beams, self.scores = [], self.scores[:0]  # no running beam can win any more
            return []
        return self._placed([self.places[parent] for _, parent, _ in chosen])

    def _placed(self, parent_rows: list[int]) -> list[int]:
        """Give each new beam a row: its parent's if no earlier beam took it (the row holds
        the beam's keys and values already), else a free one (a copy). Returns the parent
        row of each row. Rows in score order would copy most beams every step."""
        width = len(parent_rows)
        self.places = [-1] * width
        taken = set()
        for beam, row in enumerate(parent_rows):
            if row < width and row not in taken:
                self.places[beam] = row
                taken.add(row)
        free = iter(sorted(set(range(width)) - taken))
        self.places = [row if row >= 0 else next(free) for row in self.places]
        parents = [0] * width
        for beam, row in enumerate(self.places):
            parents[row] = parent_rows[beam]
        return parents

    def in_rows(self) -> list[list[int]]:
        """The beams in the order of their rows."""
        beams = [[]] * len(self.beams)
        for beam, row in enumerate(self.places):
            beams[row] = self.beams[beam]
        return beams

    def best(self) -> list[int]:
        """The best finished or still running hypothesis (empty if there is none)."""
        running = zip(self.scores.tolist(), self.beams, strict=True)
        found = self.finished + [(self.normalised(s, len(b)), b) for s, b in running]
        return max(found, key=lambda item: item[0])[1] if found else []

    def normalised(self, total: float, length: int) -> float:
        return total / max(length, 1) ** self.length_penalty


def _replayed(constraint: Callable[[list[int]], Constraint], prompt: list[int],
              beam: list[int]) -> list[int]:  # fmt: skip
    """A beam's banned ids: beams branch every step, so the constraint replays the beam."""
    rule = constraint(prompt)
    for token in beam:
        rule.add(token)
    return rule.banned()


def _ranked(candidates: torch.Tensor, first: int) -> Iterator[tuple[float, int]]:
    """(score, index into the flattened candidates (n, V)) from best to worst: the top
    `first` cheaply (the best of each row's best: a topk over rows runs on every core), the
    rest only if needed."""
    width = candidates.shape[-1]
    top = candidates.topk(min(first, width), dim=-1)
    indices = [row * width + i for row, ids in enumerate(top.indices.tolist()) for i in ids]
    best = top.values.flatten().topk(min(first, candidates.numel()))
    chosen = [indices[i] for i in best.indices.tolist()]
    yield from zip(best.values.tolist(), chosen, strict=True)
    if candidates.numel() > first:
        done = set(chosen)  # ties may order differently in the full sort
        ordered = candidates.flatten().sort(descending=True)
        for score, index in zip(ordered.values.tolist(), ordered.indices.tolist(), strict=True):
            if index not in done:
                yield score, index


def _beams_done(finished, best_running: float, length: int, settings: Settings,
                limit: int) -> bool:  # fmt: skip
    """Whether no running beam can still beat the worst of the best num_beams finished."""
    if len(finished) < settings.num_beams:
        return False
    if settings.early_stopping:
        return True
    worst = sorted(score for score, _ in finished)[-settings.num_beams]
    # log-probability sums only fall; with a positive length penalty the longest possible
    # hypothesis divides by the most, so that bounds what a running beam can still reach
    reach = limit if settings.length_penalty > 0 else length
    return best_running / max(reach, 1) ** settings.length_penalty <= worst
