"""Generation for every task: KV-cached sampling and beam search, batched, streamed, and
unbounded in length (a sliding window re-prefills the most recent tokens past the context).

Shapes: B rows (prompts, samples or beams), V vocabulary size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from seqgen.beam import beam_search
from seqgen.decoding import (
    NEG_INF,
    Constraint,
    Settings,
    Waiting,
    adjust_logits,
    constraint_makers,
    ends_row,
    joined,
    row_bans,
    rows_for,
)
from seqgen.model import GPT
from seqgen.state import size_of


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
        steps = beam_search(model, prompts, settings, outputs, limits, batch_size)
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


def _sample(model, prompts, settings, streams, outputs, limits,
            batch_size: int | None) -> Iterator[tuple[int, int]]:  # fmt: skip
    """Sampled or greedy rows, at most `batch_size` at once: a row that ends leaves the batch
    and a waiting prompt takes its place (continuous batching), so a batch runs full rather
    than as long as its longest row."""
    most = min(batch_size or len(prompts), len(prompts))
    rows = rows_for(model, prompts, limits, settings, most, share_prompts=True)
    sequences = [list(p) for p in prompts]
    waiting = Waiting(limits, most)
    yield from ((i, None) for i in waiting.empty)
    live: list[int] = []  # the prompt of each cache row
    makers = constraint_makers(settings)
    rules: dict[int, list[Constraint]] = {}
    penalised = settings.repetition_penalty != 1.0
    seen = torch.zeros(0, model.config.vocab_size, dtype=torch.bool, device=rows.device)
    logits = None
    while waiting or live:
        new = waiting.admitted(len(live))
        if new:
            logits = joined(logits, rows.admit([sequences[i] for i in new]))
            live += new
            for i in new:
                rules[i] = [make(prompts[i]) for make in makers]
            if penalised:
                marks = torch.zeros(len(new), model.config.vocab_size, dtype=torch.bool)
                for slot, i in enumerate(new):
                    marks[slot, prompts[i]] = True
                seen = torch.cat([seen, marks.to(rows.device)])
        banned = shared = None
        if makers:
            banned, shared = map(list, zip(*(row_bans(rules[row]) for row in live), strict=True))
        logits = adjust_logits(logits, seen if penalised else None, settings,
                               [len(outputs[row]) for row in live], banned, shared)  # fmt: skip
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
            if ends_row(outputs[row], settings) or len(outputs[row]) >= limits[row]:
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
