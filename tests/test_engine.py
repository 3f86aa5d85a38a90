"""seqgen.generation.engine: generate and stream, their options and errors, KV-cached
decoding past the context."""

import pytest
import torch
from helpers import first_new_at, reference_greedy

from seqgen.generation.cache import KVCache
from seqgen.generation.engine import generate, stream


def test_kv_cache_equals_full_recompute_at_every_step(model):
    x = torch.randint(0, 40, (3, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(x)
        cache = KVCache(model.config, 3, 12, x.device, torch.float32)
        steps = [model(x[:, :4], cache=cache)]
        steps += [model(x[:, t : t + 1], cache=cache) for t in range(4, 12)]
    assert (torch.cat(steps, 1) - full).abs().max() < 1e-5


def test_left_padding_mask_and_positions_match_unpadded(model):
    short, long = [5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8]
    padded = torch.tensor([[0] * 5 + short, long])
    real = torch.tensor([[False] * 5 + [True] * 3, [True] * 8])
    positions = (real.long().cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(padded, positions, KVCache(model.config, 2, 8, "cpu", torch.float32), real)
    assert (out[0, 5:] - model(torch.tensor([short]))[0]).abs().max() < 1e-5
    assert (out[1] - model(torch.tensor([long]))[0]).abs().max() < 1e-5


def test_greedy_is_argmax_and_slides_past_the_context(model):
    prompt = [1, 5, 7]
    assert generate(model, prompt, 30, temperature=0) == reference_greedy(model, prompt, 30)
    long_prompt = list(range(1, 20))  # longer than block_size
    expected = reference_greedy(model, long_prompt, 10)
    assert generate(model, long_prompt, 10, temperature=0) == expected
    assert generate(model, prompt, 30, temperature=0, window_keep=4) == reference_greedy(
        model, prompt, 30, keep=4
    )


def test_batch_equals_separate_calls(model):
    prompts = [[1], [2, 3, 4, 5, 6], [7, 8, 9]]
    eos, at = first_new_at(generate(model, prompts[0], 20, temperature=0), 2)
    separate = [generate(model, p, 20, temperature=0, eos_id=eos) for p in prompts]
    assert generate(model, prompts, 20, temperature=0, eos_id=eos) == separate
    assert len(separate[0]) == at and any(len(s) > at for s in separate[1:])


def test_tensor_prompts(model):
    expected = generate(model, [[1, 2], [3, 4]], 5, temperature=0)
    assert generate(model, torch.tensor([[1, 2], [3, 4]]), 5, temperature=0) == expected
    assert generate(model, torch.tensor([1, 2]), 5, temperature=0) == expected[0]


def test_seeded_sampling_repeats(model):
    a = generate(model, [1], 15, temperature=5.0, seed=3)
    assert a == generate(model, [1], 15, temperature=5.0, seed=3)
    assert a != generate(model, [1], 15, temperature=5.0, seed=4)


def test_a_row_samples_the_same_whatever_shares_its_batch(model):
    # repeated prompts (samples of one prompt) are prefilled once and copied
    prompts = [[1], [2, 3, 4, 5, 6], [7, 8, 9], [30], [11, 12], [7, 8, 9], [7, 8, 9]]
    eos = 5  # some rows end early and leave the batch, moving others in the cache
    sampled = dict(temperature=1.5, eos_id=eos, seed=7)
    together = generate(model, prompts, 25, **sampled)
    alone = [generate(model, p, 25, sample_ids=[i], **sampled) for i, p in enumerate(prompts)]
    assert together == alone
    assert len({len(row) for row in together}) > 2  # rows of different lengths
    assert together[2] != together[5] != together[6]  # each sample its own
    shuffled = generate(model, prompts[::-1], 25, sample_ids=range(6, -1, -1), **sampled)
    assert shuffled[::-1] == together
    limits = [3, 25, 9, 0, 14, 25, 2]  # rows also end at their own length limits
    cut = generate(model, prompts, limits, **sampled)
    assert all(
        row == full[: len(row)] and len(row) <= n
        for row, full, n in zip(cut, together, limits, strict=True)
    )
    with pytest.raises(ValueError, match="sample_ids"):
        generate(model, prompts, 5, sample_ids=[0, 1], **sampled)


def test_rows_leaving_the_batch_keep_greedy_outputs_and_their_penalties(model):
    prompts = [[1], [2, 3], [12, 13, 14], [26], [9, 1, 2]]
    options = dict(temperature=0, eos_id=[4, 15], repetition_penalty=1.3, no_repeat_ngram_size=2)
    together = generate(model, prompts, 20, **options)
    assert together == [generate(model, p, 20, **options) for p in prompts]
    assert len({len(row) for row in together}) > 1


def test_eos_min_tokens_and_stop_sequences(model):
    greedy = generate(model, [1], 12, temperature=0)
    assert generate(model, [1], 12, temperature=0, eos_id=greedy[0]) == []
    forced = generate(model, [1], 12, temperature=0, eos_id=greedy[0], min_new_tokens=3)
    assert len(forced) >= 3 and greedy[0] not in forced[:3]
    token, at = first_new_at(greedy, 3)
    assert generate(model, [1], 12, temperature=0, stop=[[token]]) == greedy[:at]
    stop = greedy[at - 1 : at + 1]
    assert generate(model, [1], 12, temperature=0, stop=[stop]) == greedy[: at - 1]
    assert generate(model, [1], 12, temperature=0, stop_fn=lambda ids: len(ids) == 4) == greedy[:4]


def test_repetition_penalty_discourages_repeats(model):
    plain = generate(model, [1], 30, temperature=0)
    penalised = generate(model, [1], 30, temperature=0, repetition_penalty=1e6)
    assert len(set(plain)) < len(plain)  # the plain greedy run repeats itself
    assert len(set(penalised)) == len(penalised) and 1 not in penalised


def test_streaming_leaves_the_callers_grad_mode_alone(model):
    for _ in stream(model, [1, 2], 3, temperature=0):
        assert not torch.is_inference_mode_enabled() and torch.is_grad_enabled()


def test_stream_and_callback_match_generate(model):
    expected = generate(model, [1, 2], 20, temperature=1.0, seed=5)
    assert list(stream(model, [1, 2], 20, temperature=1.0, seed=5)) == expected
    seen = []
    generate(model, [[1, 2], [3]], 5, temperature=0, on_token=lambda r, t: seen.append((r, t)))
    assert [t for r, t in seen if r == 1] == generate(model, [3], 5, temperature=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=-1), "temperature"),
        (dict(top_k=-2), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(num_beams=0), "num_beams"),
        (dict(min_new_tokens=5), "min_new_tokens"),
        (dict(repetition_penalty=0), "repetition_penalty"),
        (dict(stop=[[]]), "stop"),
        (dict(window_keep=12), "window_keep"),
        (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size"),
    ],
)
def test_invalid_settings_raise(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(model, [1], 3, **kwargs)


def test_bad_prompts_raise(model):
    with pytest.raises(ValueError, match="prompt is empty"):
        generate(model, [], 3)
    with pytest.raises(ValueError, match="prompt is empty"):
        generate(model, [[1], []], 3)
    with pytest.raises(ValueError, match="below 40"):
        generate(model, [1, 40], 3)
    with pytest.raises(ValueError, match="temperature"):
        stream(model, [1], 3, temperature=-1)  # raised at the call, not at the first id
