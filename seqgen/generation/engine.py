"""Generation for every task: KV-cached sampling and beam search, batched, streamed, and
unbounded in length (a sliding window re-prefills the most recent tokens past the context).

Shapes: B rows (prompts, samples or beams), V vocabulary size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from seqgen.generation.batch import Batch, Request, random_streams
from seqgen.generation.beam import beam_search
from seqgen.generation.decoding import Settings, rows_for
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
    settings = checked_settings(model, prompts, max(limits, default=0), options)
    streams = random_streams(seed, range(len(prompts)) if sample_ids is None else sample_ids)
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
    model: GPT,
    prompt_ids: Sequence[int],
    max_new_tokens: int = 100,
    *,
    seed: int | None = None,
    **options,
) -> Iterator[int]:
    """Yield the new ids of one prompt as they are produced; options as for `generate`.

    With beam search the ids come at the end, once the best hypothesis is known.
    """
    prompts = [list(prompt_ids)]
    settings = checked_settings(model, prompts, max_new_tokens, options)  # raises first
    limits = [settings.max_new_tokens]
    events = _events(model, prompts, settings, random_streams(seed, [0]), [[]], limits, None)
    return (token for _, token in events if token is not None)


def _limits(max_new_tokens: int | Sequence[int], count: int) -> list[int]:
    """max_new_tokens for each of `count` prompts."""
    if isinstance(max_new_tokens, int):
        return [max_new_tokens] * count
    limits = [int(n) for n in max_new_tokens]
    if len(limits) != count or any(n < 0 for n in limits):
        raise ValueError(f"max_new_tokens: give {count} numbers >= 0, one per prompt")
    return limits


def checked_settings(
    model: GPT, prompts: list[list[int]], max_new_tokens: int, options
) -> Settings:
    """Settings for decoding `prompts` on `model`; raises ValueError for what cannot work."""
    settings = Settings(max_new_tokens=max_new_tokens, **options)
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("a prompt is empty: start it with at least one id (e.g. bos or eos)")
    vocab = model.config.vocab_size
    if any(not isinstance(i, int) or not 0 <= i < vocab for p in prompts for i in p):
        raise ValueError(f"a prompt holds something other than an id below {vocab}")
    if size_of(settings.state) != model.config.state_size:
        raise ValueError(
            f"the model reads a token state of size {model.config.state_size}, "
            f"the settings give one of size {size_of(settings.state)}"
        )
    block = model.config.block_size
    if settings.window_keep is not None and not 0 < settings.window_keep < block:
        raise ValueError(f"window_keep must be in (0, {block}), got {settings.window_keep}")
    return settings


def _events(
    model, prompts, settings, streams, outputs, limits, batch_size: int | None
) -> Iterator[tuple[int, int | None]]:
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


def _sample(
    model, prompts, settings, streams, outputs, limits, batch_size: int | None
) -> Iterator[tuple[int, int | None]]:
    """Sampled or greedy rows, at most `batch_size` at once, as one `Batch`: a row that ends
    leaves it and a waiting prompt takes its place (continuous batching), so a batch runs
    full rather than as long as its longest row."""
    most = min(batch_size or len(prompts), len(prompts))
    batch = Batch(model, rows_for(model, prompts, limits, settings, most, share_prompts=True), most)
    yield from ((i, None) for i, limit in enumerate(limits) if limit == 0)
    index = {}
    for i, prompt in enumerate(prompts):
        if limits[i] > 0:
            request = Request(prompt, settings, limits[i], streams[i], output=outputs[i])
            index[request] = i
            batch.add(request)
    while batch:
        yield from ((index[request], token) for request, token in batch.step())
