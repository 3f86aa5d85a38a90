"""Continuous batching: sampled and greedy rows decoded together on one KV cache, each with
its own options, random stream and limit. A request joins at the next step and leaves when
it ends (or is cancelled), and a waiting one takes its place at once.

`seqgen.generation.engine` runs a fixed set of prompts through a `Batch`; `seqgen serve`
keeps one open and adds requests as they arrive. Each row computes what it would alone: its
options apply to it only and it draws from its own stream, so a seeded request samples the
same whatever shares its batch. Shapes: B rows, V vocabulary size.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from seqgen.generation.decoding import (
    NEG_INF,
    LogitsProcessor,
    Settings,
    Waiting,
    apply_processors,
    ban_early_eos,
    ends_row,
    joined,
    penalise_repeats,
    processor_makers,
)
from seqgen.generation.rows import Rows
from seqgen.model import GPT
from seqgen.timing import fastest_call

NUCLEUS_FIRST = 256  # the largest probabilities that top-p looks at before a whole sort
# From this many ids, a row that its largest probabilities do not settle may find its nucleus
# by buckets of probability (`_bucketed_edge`) instead of a whole sort, where that is timed
# faster here (`buckets_faster`). On an AMD Zen 4, top-p over 8 flat rows: 0.8x a sort's speed
# at 4,096 ids, 1.0x at 8,192, 1.2-1.3x at 16,384, 1.9-2.4x at GPT-2's 50,257.
BUCKETED_FROM = 8192
# Buckets of float32 probabilities by their 16 highest bits (sign, exponent, 7 bits of the
# fraction: each 1/128 of an octave wide), the lowest holding everything under 2**-28: from
# there up, float32 values summed in float64 (below 2) lose nothing in any order.
BUCKET_FLOOR = int(np.float32(2.0**-28).view(np.int32)) >> 16
BUCKETS = (int(np.float32(1.0).view(np.int32)) >> 16) - BUCKET_FLOOR + 2
EDGE_MARGIN = 1e-4  # mass either side of top_p within which a bucket's ids are sorted
TIMED_SORTS = 5  # timed calls of each way, in turns, after one warm-up call


@dataclass(eq=False)  # requests are told apart by identity
class Request:
    """One prompt decoded in a `Batch`.

    Attributes:
        prompt: the prompt's ids (not empty).
        settings: its options (temperature, top_k, top_p, stop, eos_id, ...).
        limit: most new ids.
        stream: the random stream it samples from (unused when greedy).
        logprobs: record the log-probability of each new id and of the `logprobs` most
            likely ids at its step, under the model's own distribution (None: not recorded).
        output: the new ids, appended as they come (without eos or a stop sequence).
        token_logprobs: per new id, when `logprobs` is set: (its log-probability,
            {id: log-probability} of the most likely ids).
        finish_reason: once it has ended: "stop" (eos, a stop sequence or stop_fn), "length"
            (its limit) or "cancelled".
    """

    prompt: list[int]
    settings: Settings
    limit: int
    stream: np.random.Generator
    logprobs: int | None = None
    output: list[int] = field(default_factory=list)
    token_logprobs: list[tuple[float, dict[int, float]]] = field(default_factory=list)
    finish_reason: str | None = None
    cancelled: bool = False  # set from any thread; the batch drops the row at its next step
    sequence: list[int] = field(init=False, repr=False)  # prompt + output: what a window reads
    processors: list[LogitsProcessor] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.sequence = list(self.prompt)
        self.processors = [make(self.prompt) for make in processor_makers(self.settings)]

    def cancel(self) -> None:
        self.cancelled = True


class Batch:
    """Requests decoded together, at most `most` at once on `rows`; `step()` runs one
    decoding step and returns its events: (request, id) for each new id, (request, None) once
    a request has ended (its `finish_reason` says why)."""

    def __init__(self, model: GPT, rows: Rows, most: int) -> None:
        self.model, self.rows = model, rows
        self.waiting = Waiting(most)
        self.live: list[Request] = []  # the request of each cache row
        self.seen = torch.zeros(0, model.config.vocab_size, dtype=torch.bool, device=rows.device)
        self.logits: torch.Tensor | None = None  # (B, V): the live rows' next-id logits

    @classmethod
    def open(cls, model: GPT, most: int, state=None) -> Batch:
        """A batch for requests not known yet: every row may use the whole context."""
        rows = Rows(model, model.config.block_size, state=state, most_rows=most)
        return cls(model, rows, most)

    def __bool__(self) -> bool:
        return bool(self.waiting) or bool(self.live)

    def __len__(self) -> int:
        """Requests running now (not those waiting)."""
        return len(self.live)

    def add(self, request: Request) -> None:
        """Queue `request`; it starts at a step where a place is free."""
        if not request.prompt or request.limit < 1:
            raise ValueError("a request needs a prompt and a limit of at least one id")
        self.waiting.add(request)

    @torch.inference_mode()
    def step(self) -> list[tuple[Request, int | None]]:
        events: list[tuple[Request, int | None]] = []
        for request in [r for r in self.waiting.queue if r.cancelled]:
            self.waiting.remove(request)
            request.finish_reason = "cancelled"
            events.append((request, None))
        events += self._drop(
            [slot for slot, r in enumerate(self.live) if r.cancelled], "cancelled"
        )[0]
        self._admit()
        if not self.live:
            return events
        live = self.live
        raw = self.logits
        logits = self._adjusted(raw)
        tokens = self._chosen(logits)
        finished: list[int] = []
        for slot, (request, token) in enumerate(zip(live, tokens.tolist(), strict=True)):
            settings = request.settings
            if token in settings.eos_ids:
                request.finish_reason = "stop"
                finished.append(slot)
                continue
            if request.logprobs is not None:
                request.token_logprobs.append(_logprobs(raw[slot], token, request.logprobs))
            request.output.append(token)
            request.sequence.append(token)
            self.seen[slot, token] = True
            events.append((request, token))
            if ends_row(request.output, settings):
                request.finish_reason = "stop"
                finished.append(slot)
            elif len(request.output) >= request.limit:
                request.finish_reason = "length"
                finished.append(slot)
        self.logits = None
        ended, order = self._drop(finished, None)
        if order is not None:
            tokens = tokens[order]
        if self.live:
            self.logits = self.rows.step(tokens, [r.sequence for r in self.live])
        return events + ended

    def _admit(self) -> None:
        new = self.waiting.admitted(len(self.live))
        if not new:
            return
        self.logits = joined(self.logits, self.rows.admit([r.sequence for r in new]))
        marks = torch.zeros(len(new), self.model.config.vocab_size, dtype=torch.bool)
        for slot, request in enumerate(new):
            marks[slot, request.prompt] = True
        self.seen = torch.cat([self.seen, marks.to(self.rows.device)])
        self.live = self.live + new

    def _drop(
        self, slots: list[int], reason: str | None
    ) -> tuple[list[tuple[Request, None]], torch.Tensor | None]:
        """End the requests at `slots` (with `reason` unless they have one): their events,
        and the old place of each row left (the others move into their places), or None when
        nothing moved."""
        events = []
        for slot in slots:
            request = self.live[slot]
            request.finish_reason = request.finish_reason or reason
            events.append((request, None))
        if not slots:
            return events, None
        order = self.rows.drop(slots)
        self.live = [self.live[i] for i in order.tolist()]
        self.seen = self.seen[order]
        if self.logits is not None:  # dropped before their step: the logits are pending
            self.logits = self.logits[order]
        return events, order

    def _adjusted(self, logits: torch.Tensor) -> torch.Tensor:
        """Each row's logits after its own repetition penalty, bans and min_new_tokens."""
        live = self.live
        penalties = [r.settings.repetition_penalty for r in live]
        if any(p != 1.0 for p in penalties):
            penalty = torch.tensor(penalties, device=logits.device)[:, None]
            logits = penalise_repeats(logits, self.seen, penalty)
        logits = apply_processors(logits, [(r.output, r.processors) for r in live])
        early = {
            slot: r.settings.eos_ids
            for slot, r in enumerate(live)
            if r.settings.eos_ids and len(r.output) < r.settings.min_new_tokens
        }
        return ban_early_eos(logits, early)

    def _chosen(self, logits: torch.Tensor) -> torch.Tensor:
        """Each row's next id (B,): the most likely where greedy, else a draw from its own
        stream after its temperature, top_k and top_p."""
        live = self.live
        sampled = [slot for slot, r in enumerate(live) if r.settings.temperature > 0]
        if len(sampled) < len(live):  # greedy rows: the sampled ones are overwritten below
            tokens = logits.argmax(dim=-1)
            if not sampled:
                return tokens
            logits = logits[sampled]
        else:
            tokens = torch.empty(len(live), dtype=torch.long, device=logits.device)
        rows = [live[slot] for slot in sampled]
        temperatures = torch.tensor([r.settings.temperature for r in rows], device=logits.device)
        logits = logits / temperatures[:, None].to(logits.dtype)
        by_filter: dict[tuple, list[int]] = {}
        for place, r in enumerate(rows):
            by_filter.setdefault((r.settings.top_k, r.settings.top_p), []).append(place)
        for (top_k, top_p), places in by_filter.items():
            if not top_k and (top_p is None or top_p >= 1.0):
                continue
            if len(places) == len(rows):
                logits = filter_logits(logits, top_k, top_p)
            else:
                logits[places] = filter_logits(logits[places], top_k, top_p)
        drawn = draw(torch.softmax(logits, -1), [r.stream for r in rows])
        tokens[torch.tensor(sampled, device=tokens.device)] = drawn.to(tokens.device)
        return tokens


def random_streams(seed: int | None, sample_ids: Sequence[int]) -> list[np.random.Generator]:
    """One random stream per row, from the seed (a fresh one if None) and the row's id."""
    base = seed % 2**64 if seed is not None else int(np.random.SeedSequence().entropy)
    return [np.random.default_rng([base, int(i)]) for i in sample_ids]


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
    kept, least = _nucleus_edge(probs, top_p)  # (B, 1) each, kept >= 1
    inside = probs >= least
    if bool((inside.sum(dim=-1, keepdim=True) > kept).any()):  # more tied with least than fit
        above = probs > least
        tied = probs == least
        inside = above | (tied & (tied.cumsum(dim=-1) <= kept - above.sum(dim=-1, keepdim=True)))
    return logits.masked_fill(~inside, NEG_INF)


def _nucleus_edge(probs: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's nucleus size (B, 1) and the least probability in it (B, 1). A row's largest
    NUCLEUS_FIRST probabilities settle it where its nucleus is smaller (a trained model's
    usually is); the other rows are settled by buckets from BUCKETED_FROM ids where those
    are faster here (`_bucketed_edge`), and sorted whole where they are not or do not settle
    a row. Sorting GPT-2's 50,257 probabilities took 1.3 ms a row, longer than the rest of
    sampling (an AMD Zen 4)."""
    B, V = probs.shape
    kept = torch.empty(B, 1, dtype=torch.long, device=probs.device)
    least = torch.empty(B, 1, dtype=probs.dtype, device=probs.device)
    k = min(NUCLEUS_FIRST, V)
    # k probabilities reach top_p only where k times the largest does (a flat row never)
    hopeful = (probs.amax(dim=-1) * k >= top_p).nonzero()[:, 0]
    settled = torch.zeros(B, dtype=torch.bool, device=probs.device)
    if len(hopeful):
        first = probs[hopeful].topk(k, dim=-1).values  # descending
        count = (~_outside(first, top_p)).sum(dim=-1, keepdim=True)
        # all k kept: the nucleus may go on past them, unless they are the whole row
        done = (count[:, 0] < k) | (k == V)
        rows = hopeful[done]
        kept[rows], least[rows] = count[done], first[done].gather(-1, count[done] - 1)
        settled[rows] = True
    rest = (~settled).nonzero()[:, 0]
    if len(rest) and V >= BUCKETED_FROM and probs.is_cpu and buckets_faster(V):
        count, edge, exact = _bucketed_edge(probs[rest], top_p)
        kept[rest[exact]], least[rest[exact]] = count[exact], edge[exact]
        rest = rest[~exact]
    if len(rest):
        kept[rest], least[rest] = _sorted_edge(probs[rest] if len(rest) < B else probs, top_p)
    return kept, least


def _sorted_edge(probs: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`_nucleus_edge` of rows (R, V) by sorting them whole."""
    ordered = _descending(probs)
    count = (~_outside(ordered, top_p)).sum(dim=-1, keepdim=True)
    return count, ordered.gather(-1, count - 1)


@functools.cache
def buckets_faster(vocab: int) -> bool:
    """Whether `_bucketed_edge` settles rows of `vocab` ids faster than a whole sort on this
    CPU, timed once per process and vocabulary size on flat rows (whose nucleus holds most
    ids): a sort's speed differs by CPU as much as its vectorised kernels do."""
    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(8, vocab, generator=generator), dim=-1)
    calls = {  # the sort first: buckets only where strictly faster
        "sort": lambda: _sorted_edge(probs, 0.9),
        "buckets": lambda: _bucketed_edge(probs, 0.9),
    }
    return fastest_call(calls, TIMED_SORTS) == "buckets"


def _bucketed_edge(
    probs: torch.Tensor, top_p: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`_nucleus_edge` of float32 rows (R, V) without sorting them whole: the nucleus size
    (R, 1), its least probability (R, 1), and whether a row was settled so (R,).

    Each row's probabilities are summed by bucket (BUCKETS), largest first. Ids in buckets
    whose running mass stays EDGE_MARGIN under top_p are in the nucleus, those past a bucket
    where it is EDGE_MARGIN over it are not (float32 rounding moves a sum by ~1e-7); only the
    buckets between are sorted. A whole sort's running sums (float64, rounded to float32) are
    exact from 2**-28 up, so the sorted buckets' start where the larger ids' sum leaves off
    and give the very sums, counts and least probability a whole sort gives. Rows whose edge
    reaches below 2**-28, or whose mass never passes top_p by the margin, are not settled."""
    R = probs.shape[0]
    bucket = ((probs.view(torch.int32) >> 16) - (BUCKET_FLOOR - 1)).clamp_(0, BUCKETS - 1).long()
    mass = torch.zeros(R, BUCKETS, dtype=torch.float64, device=probs.device)
    above = mass.scatter_add_(1, bucket, probs.double()).flip(1).cumsum(1)  # largest first
    surely_in = (above <= top_p - EDGE_MARGIN).sum(1, keepdim=True)  # buckets, largest first
    not_out = (above < top_p + EDGE_MARGIN).sum(1, keepdim=True)
    lowest_in, lowest_sorted = BUCKETS - 1 - surely_in, BUCKETS - 1 - not_out
    start = torch.where(surely_in > 0, above.gather(1, (surely_in - 1).clamp(min=0)), 0.0)
    inside = bucket > lowest_in
    sorted_here = (bucket >= lowest_sorted) & ~inside
    count = torch.empty(R, 1, dtype=torch.long, device=probs.device)
    least = torch.empty(R, 1, dtype=probs.dtype, device=probs.device)
    exact = lowest_sorted[:, 0] > 0
    for row in exact.nonzero()[:, 0].tolist():
        ordered = probs[row, sorted_here[row]].sort(descending=True).values
        sums = (start[row] + ordered.double().cumsum(0)).float()
        found = int((~(sums - ordered >= top_p)).sum())
        count[row] = int(inside[row].sum()) + found
        least[row] = ordered[found - 1] if found else probs[row, inside[row]].min()
    return count, least, exact


def _descending(probs: torch.Tensor) -> torch.Tensor:
    """Each row's values in descending order. On CPU numpy's vectorised sort of the values
    alone is ~10x torch.sort, which orders the indices too."""
    if probs.device.type != "cpu":
        return probs.sort(dim=-1, descending=True).values
    return torch.from_numpy(np.ascontiguousarray(np.sort(probs.numpy(), axis=-1)[:, ::-1]))


def _outside(ordered: torch.Tensor, top_p: float) -> torch.Tensor:
    """For probabilities in descending order: whether the tokens ranked above each already
    reach top_p."""
    return ordered.cumsum(dim=-1) - ordered >= top_p


def draw(probs: torch.Tensor, streams: list[np.random.Generator]) -> torch.Tensor:
    """One id per row of `probs` (B, V), by inverse transform sampling with row b's uniform
    from streams[b] alone. Returns (B,)."""
    uniforms = torch.tensor(
        [1.0 - stream.random() for stream in streams],  # in (0, 1]
        dtype=torch.float64,
        device=probs.device,
    )
    cdf = probs.double().cumsum(dim=-1)
    ids = torch.searchsorted(cdf, (uniforms * cdf[:, -1])[:, None])[:, 0]
    return ids.clamp(max=probs.shape[-1] - 1)


def _logprobs(logits: torch.Tensor, token: int, most: int) -> tuple[float, dict[int, float]]:
    """The log-probability of `token` under the (V,) logits, and the `most` likeliest ids'."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    top = logprobs.topk(most) if most else None
    alternatives = (
        {} if top is None else dict(zip(top.indices.tolist(), top.values.tolist(), strict=True))
    )
    return float(logprobs[token]), alternatives
