import itertools

import pytest
import torch

from seqgen.config import ModelConfig
from seqgen.generation.batch import filter_logits
from seqgen.generation.cache import KVCache
from seqgen.generation.decoding import NgramBan, Settings, ban_within
from seqgen.generation.engine import generate, stream
from seqgen.model import GPT

SUCCESSOR = {0: 1, **{t: t + 1 for t in range(1, 9)}, 9: 1}  # cycle 1..9
SUCCESSOR |= {t: t + 1 for t in range(10, 24)} | {24: 10}  # cycle 10..24
SUCCESSOR |= {t: t + 1 for t in range(25, 39)} | {39: 25}  # cycle 25..39


@pytest.fixture(scope="module")
def model():
    """A tiny GPT trained to follow SUCCESSOR, so its greedy outputs are varied and known."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=40, block_size=12, n_layer=2, n_head=2, n_embd=32))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        starts = torch.randint(0, 40, (32,)).tolist()
        rows = []
        for token in starts:
            row = [token]
            while len(row) < 13:
                row.append(SUCCESSOR[row[-1]])
            rows.append(row)
        batch = torch.tensor(rows)
        loss = torch.nn.functional.cross_entropy(
            model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten()
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def first_new_at(sequence, index):
    """A token whose first occurrence in `sequence` is at `index` or later, and where."""
    for i in range(index, len(sequence)):
        if sequence[i] not in sequence[:i]:
            return sequence[i], i
    raise AssertionError(f"no new token from index {index} in {sequence}")


def next_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids[-model.config.block_size :]]))[0, -1]


def reference_greedy(model, prompt, n, keep=None):
    """Full recompute each step, with the same sliding-window policy as the engine."""
    block = model.config.block_size
    keep = keep or block - block // 4
    ids, start = list(prompt), max(0, len(prompt) - block)
    if len(prompt) > block:
        start = len(prompt) - keep
    out = []
    for _ in range(n):
        if len(ids) - start > block:
            start = len(ids) - keep
        token = next_logits(model, ids[start:]).argmax().item()
        out.append(token)
        ids.append(token)
    return out


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


class OddAfterEven:
    """A processor: after an even id, only odd ids (and the other way round). It keeps no
    state of its own: the last id is in what it is given."""

    def __init__(self, prompt):
        self.prompt = prompt

    def __call__(self, ids, logits):
        last = (self.prompt + list(ids))[-1]
        logits[list(range(last % 2, 40, 2))] = float("-inf")
        return logits

    def copy(self):
        return self


@pytest.mark.parametrize(
    "options", [dict(temperature=2.0, seed=3, eos_id=5), dict(num_beams=3), dict(temperature=0)]
)
def test_a_processor_bans_ids_as_each_row_grows(model, options):
    prompts = [[1], [2, 3, 4], [12], [12]]
    plain = generate(model, prompts, 16, **options)
    ruled = generate(model, prompts, 16, processor=OddAfterEven, **options)
    for prompt, row in zip(prompts, ruled, strict=True):
        ids = prompt[-1:] + row
        assert all((a + b) % 2 == 1 for a, b in zip(ids, ids[1:], strict=False)), row
    assert plain != ruled  # the successor cycles break the rule somewhere


def test_draws_follow_the_distribution_and_skip_impossible_tokens():
    from seqgen.generation.batch import draw, random_streams

    probs = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.2, 0.0]]).repeat(4000, 1)
    counts = torch.bincount(draw(probs, random_streams(0, range(4000))), minlength=6)
    assert counts[[0, 2, 5]].sum() == 0
    assert torch.allclose(counts.double() / 4000, probs[0].double(), atol=0.03)


def test_nucleus_equals_a_full_sort():
    from seqgen.generation.batch import _nucleus

    generator = torch.Generator().manual_seed(0)
    for scale in (0.01, 1.0, 8.0):  # nearly flat (the nucleus holds most of 1,000 ids) to peaked
        logits = scale * torch.randn(3, 1000, generator=generator)
        for top_p in (0.1, 0.5, 0.95):
            ordered, order = logits.sort(dim=-1, descending=True)
            probs = torch.softmax(ordered, dim=-1)
            drop = (probs.cumsum(-1) - probs >= top_p).scatter(
                -1, order, probs.cumsum(-1) - probs >= top_p
            )
            assert torch.equal(torch.isinf(_nucleus(logits, top_p)), drop)


def test_nucleus_keeps_tied_tokens_in_id_order():
    from seqgen.generation.batch import _nucleus

    logits = torch.tensor([[1.0, 2.0, 1.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    # row 0: .447 for id 1, then three ties of .164: the nucleus of 0.6 needs one of them
    # row 1: five ties of .2, of which 0.5 needs three
    assert (~torch.isinf(_nucleus(logits, 0.6))).tolist()[0] == [True, True, False, False, False]
    assert (~torch.isinf(_nucleus(logits, 0.5))).tolist() == [
        [True, True, False, False, False],
        [True, True, True, False, False],
    ]
    assert (~torch.isinf(_nucleus(logits, 0.65))).tolist()[0] == [True, True, True, False, False]


def rescanned_ngram_ends(ids: list[int], n: int) -> list[int]:
    """The ids that would complete an n-gram already in `ids`, by scanning them all."""
    if len(ids) < n - 1:
        return []
    prefix = ids[len(ids) - n + 1 :] if n > 1 else []
    return [ids[i + n - 1] for i in range(len(ids) - n + 1) if ids[i : i + n - 1] == prefix]


def banned_by(processor, ids: list[int], vocab: int = 8) -> list[int]:
    """The ids a processor bans after the new ids `ids`."""
    logits = processor(ids, torch.zeros(vocab))
    return torch.isinf(logits).nonzero().flatten().tolist()


def test_ngram_ban_equals_a_rescan_and_its_copies_branch_apart():
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 4, (60,), generator=generator).tolist()
    for n in (1, 2, 3, 4):
        ban = NgramBan(n, prompt=[99])  # the prompt does not count
        for step in range(len(ids)):
            expected = sorted(set(rescanned_ngram_ends(ids[:step], n)))
            assert banned_by(ban, ids[:step]) == expected
    ban = NgramBan(2, prompt=[])
    banned_by(ban, [1, 2])
    twin = ban.copy()  # two beams from one: what one sees is not the other's
    assert banned_by(ban, [1, 2, 1]) == [2] and banned_by(twin, [1, 2, 3]) == []


def test_top_k_and_top_p_exclude_tokens():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    assert torch.isinf(filter_logits(logits, 2, None)[0, 2:]).all()
    assert not torch.isinf(filter_logits(logits, 2, None)[0, :2]).any()
    kept = ~torch.isinf(filter_logits(logits, None, 0.8)[0])  # probs .64 .24 .09 ...
    assert kept.tolist() == [True, True, False, False, False]
    kept = ~torch.isinf(filter_logits(logits, None, 0.1)[0])
    assert kept.tolist() == [True, False, False, False, False]


@pytest.mark.parametrize("kwargs", [dict(top_k=3), dict(top_p=0.3), dict(top_k=5, top_p=0.5)])
def test_sampled_tokens_stay_inside_the_filter(model, kwargs):
    prompt = [3, 4]
    allowed = ~torch.isinf(
        filter_logits(next_logits(model, prompt)[None], kwargs.get("top_k"), kwargs.get("top_p"))[0]
    )
    draws = {generate(model, prompt, 1, seed=s, **kwargs)[0] for s in range(40)}
    assert all(allowed[t] for t in draws)


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


def bigrams(ids):
    return [tuple(ids[i : i + 2]) for i in range(len(ids) - 1)]


@pytest.mark.parametrize("num_beams", [1, 3])
def test_no_repeat_ngram_size_blocks_repeated_ngrams_in_new_ids(model, num_beams):
    plain = generate(model, [1], 30, temperature=0, num_beams=num_beams)
    assert len(set(bigrams(plain))) < len(bigrams(plain))  # the cycle repeats bigrams
    blocked = generate(model, [1], 30, temperature=0, num_beams=num_beams, no_repeat_ngram_size=2)
    assert len(blocked) == 30 and len(set(bigrams(blocked))) == len(bigrams(blocked))
    assert blocked[:5] == plain[:5]  # nothing changes before a repeat would happen


def test_repeated_ngram_ends():
    assert banned_by(NgramBan(3, [99]), [5, 6, 7, 5, 6]) == [7]
    assert banned_by(NgramBan(2, [99]), [5, 6, 5]) == [6]
    assert banned_by(NgramBan(1, [99]), [4, 4, 5]) == [4, 5]
    assert banned_by(NgramBan(3, [99]), [5]) == []


def test_beam_one_equals_greedy(model):
    greedy = generate(model, [2, 9], 15, temperature=0)
    assert generate(model, [2, 9], 15, num_beams=1, temperature=0) == greedy
    # the beam-search code path itself, with a beam that can hold only one hypothesis
    from seqgen.generation.beam import beam_search

    def beam(settings):
        outputs = [[]]
        with torch.no_grad():
            list(beam_search(model, [[2, 9]], settings, outputs, [settings.max_new_tokens], 1))
        return outputs[0]

    assert beam(Settings(max_new_tokens=15, num_beams=1)) == greedy
    eos, _ = first_new_at(greedy, 4)
    one_beam = Settings(max_new_tokens=15, num_beams=1, eos_id=eos, length_penalty=0.0)
    assert beam(one_beam) == generate(model, [2, 9], 15, temperature=0, eos_id=eos)


def sequence_logprob(model, prompt, new):
    ids, total = list(prompt), 0.0
    for token in new:
        total += torch.log_softmax(next_logits(model, ids), -1)[token].item()
        ids.append(token)
    return total


def test_wide_beam_search_is_exact_on_a_tiny_problem():
    torch.manual_seed(1)
    small = GPT(ModelConfig(vocab_size=5, block_size=8, n_layer=1, n_head=1, n_embd=8)).eval()
    best = max(
        itertools.product(range(5), repeat=3), key=lambda seq: sequence_logprob(small, [0], seq)
    )
    found = generate(small, [0], 3, num_beams=25, length_penalty=0.0)
    assert tuple(found) == best
    narrow = generate(small, [0], 3, num_beams=2, length_penalty=0.0)
    greedy = generate(small, [0], 3, temperature=0)
    assert sequence_logprob(small, [0], narrow) >= sequence_logprob(small, [0], greedy) - 1e-6


def plainbeam_search(model, prompt, new_tokens, num_beams):
    """Beam search without eos by full forward passes: what the cached rows must compute."""
    beams = [(0.0, [])]
    for _ in range(new_tokens):
        candidates = []
        for score, beam in beams:
            logprobs = torch.log_softmax(next_logits(model, prompt + beam), -1).tolist()
            candidates += [(score + lp, beam + [t]) for t, lp in enumerate(logprobs)]
        beams = sorted(candidates, key=lambda c: -c[0])[:num_beams]
    return beams[0][1]


def test_beam_search_equals_a_plain_one_without_a_cache(monkeypatch):
    from seqgen.generation.beam import _Search

    torch.manual_seed(7)
    small = GPT(ModelConfig(vocab_size=30, block_size=32, n_layer=2, n_head=2, n_embd=32)).eval()
    prompts = [[1], [4, 5, 6, 7], [9, 2, 9], [3, 3]]
    advance, moved = _Search.advance, []

    def checked(search, logits, top, settings):  # each row's logits are its own beam's
        for beam, row in zip(search.beams, logits[search.places], strict=True):
            assert (row - next_logits(small, search.prompt + beam)).abs().max() < 1e-4
        moved.append(search.places != sorted(search.places))
        return advance(search, logits, top, settings)

    monkeypatch.setattr(_Search, "advance", checked)
    for num_beams in (3, 4):
        expected = [plainbeam_search(small, p, 8, num_beams) for p in prompts]
        assert generate(small, prompts, 8, num_beams=num_beams) == expected
    assert sum(moved) > 10  # beams in other rows than their rank


def test_ranked_candidates_go_from_best_to_worst_past_the_first():
    from seqgen.generation.beam import _ranked

    candidates = torch.randn(3, 7, generator=torch.Generator().manual_seed(0))
    best = candidates.topk(4, dim=-1)  # each beam's best four, as _candidates gives them
    top = [
        list(zip(v, i, strict=True))
        for v, i in zip(best.values.tolist(), best.indices.tolist(), strict=True)
    ]
    ranked = list(_ranked(top, 7, 4, lambda: candidates))
    flat = candidates.flatten()
    assert sorted(index for _, index in ranked) == list(range(21))
    assert [score for score, _ in ranked] == sorted(flat.tolist(), reverse=True)
    assert all(flat[index].item() == score for score, index in ranked)


def test_a_search_past_its_best_candidates_ranks_the_rest_alike():
    from seqgen.generation.beam import _candidates, _Search

    logits = torch.randn(3, 12, generator=torch.Generator().manual_seed(2))
    settings = Settings(num_beams=2, eos_id=list(range(9)))  # most ids end a beam
    search = _Search([1], limit=5, length_penalty=1.0, device="cpu", processors=[])
    search.beams, search.places, search.step = [[3], [4], [5]], [2, 0, 1], 1
    search.processors = [[], [], []]
    search.scores = torch.tensor([-1.0, -1.5, -2.0])
    # every candidate in the beams' order, ranked: the two best that do not end a beam win
    logprobs = torch.log_softmax(logits[search.places], -1)
    ranked = sorted(
        ((search.scores[b] + logprobs[b, t]).item(), b, t) for b in range(3) for t in range(12)
    )[::-1]
    expected = [(score, search.beams[b] + [t]) for score, b, t in ranked if t >= 9][:2]
    _, top = _candidates(logits, [search], settings)  # each row's best 4
    merged = sorted(c for row in top for c in row)[::-1][:4]
    assert all(token < 9 for _, token in merged)  # the best 4 all end a beam: more are needed
    search.advance(logits, top, settings)
    assert list(zip(search.scores.tolist(), search.beams, strict=True)) == expected


def test_beam_search_handles_eos_and_batches(model):
    eos, _ = first_new_at(generate(model, [1], 12, temperature=0), 2)
    out = generate(model, [[1], [4, 5]], 12, num_beams=3, eos_id=eos)
    assert len(out) == 2 and all(eos not in o for o in out)
    assert out[0] == generate(model, [1], 12, num_beams=3, eos_id=eos)
    early = generate(model, [1], 12, num_beams=3, eos_id=eos, early_stopping=True)
    assert eos not in early


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


def test_attention_maps_are_causal_distributions(model):
    x = torch.randint(0, 40, (2, 10), generator=torch.Generator().manual_seed(2))
    maps = model.attention_maps(x)
    assert len(maps) == 2 and maps[0].shape == (2, 2, 10, 10)
    for weights in maps:
        assert torch.allclose(weights.sum(-1), torch.ones(2, 2, 10))
        assert weights.triu(diagonal=1).abs().max() == 0
    # the weights the maps show are the ones attention applies
    with torch.no_grad():
        positions = torch.arange(10)
        hidden = model.transformer.wte(x) + model.transformer.wpe(positions)
        attn = model.transformer.h[0].attn
        h = model.transformer.h[0].ln_1(hidden)
        q, k, v = attn.heads(h)
        applied = attn.attend(q, k, v, None, None, 0)
        assert (attn.weights(h) @ v - applied).abs().max() < 1e-5


def test_packed_cpu_linears_give_the_same_outputs(model):
    import copy

    from seqgen.cpu import PackedLinear, pack_linears

    packed = copy.deepcopy(model)
    if not pack_linears(packed, measure=False):
        pytest.skip("this torch build has no oneDNN packed linear")
    assert isinstance(packed.lm_head, PackedLinear)
    x = torch.randint(0, 40, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (packed(x) - model(x)).abs().max() < 1e-4
    assert generate(packed, [[1], [12, 13]], 20, temperature=0) == generate(
        model, [[1], [12, 13]], 20, temperature=0
    )


def test_beam_search_batched_across_prompts_equals_one_prompt_at_a_time():
    import random

    torch.manual_seed(4)
    small = GPT(ModelConfig(vocab_size=40, block_size=24, n_layer=2, n_head=2, n_embd=32)).eval()
    with torch.no_grad():
        small.transformer.wte.weight.mul_(8)  # spread logits: beams diverge
    rng = random.Random(0)
    prompts = [[rng.randrange(40) for _ in range(rng.randint(1, 14))] for _ in range(24)]
    limits = [rng.randint(0, 30) for _ in prompts]  # some past the context: windows slide
    for options in (
        dict(num_beams=3),
        dict(num_beams=4, eos_id=7, length_penalty=0.0),
        dict(
            num_beams=2,
            eos_id=[3, 5],
            repetition_penalty=1.3,
            no_repeat_ngram_size=2,
            early_stopping=True,
        ),
    ):
        alone = [generate(small, p, n, **options) for p, n in zip(prompts, limits, strict=True)]
        for batch_size in (None, 5):  # 5: waiting prompts start as searches end
            batched = generate(small, prompts, limits, batch_size=batch_size, **options)
            assert batched == alone, (options, batch_size)
        assert all(len(out) <= n for out, n in zip(batched, limits, strict=True))
        assert sum(map(len, batched)) > 100


def test_new_beams_keep_their_parents_rows_where_they_can():
    from seqgen.generation.beam import _Search

    search = _Search([1, 2], limit=9, length_penalty=1.0, device="cpu", processors=[])
    search.beams, search.places = [[5], [6], [7], [8]], [2, 0, 3, 1]  # beam 0 in row 2, ...
    # new beams continue beams 0, 0, 3, 1: rows 2, 2, 1, 0; the second child of beam 0 copies
    assert search._placed([2, 2, 1, 0]) == [0, 1, 2, 2]  # the parent row of each row
    assert search.places == [2, 3, 1, 0]
    search.beams = [[5, 1], [5, 2], [8, 3], [6, 4]]
    assert search.in_rows() == [[6, 4], [8, 3], [5, 1], [5, 2]]
    assert search._placed([3, 3, 0]) == [0, 3, 3]  # a narrower block: row 3 moves to 1, 2


def test_a_shared_prefix_gives_what_each_row_holding_its_prompt_gives():
    from seqgen.generation.cache import SharedPrefix

    torch.manual_seed(5)
    config = ModelConfig(vocab_size=40, block_size=24, n_layer=2, n_head=2, n_embd=32)
    small = GPT(config).eval()
    # prompts [3, 4, 5, 6, 7] and [9, 10], left-padded: the prefix has a padding mask
    ids = torch.tensor([[3, 4, 5, 6, 7], [0, 0, 0, 9, 10]])
    real = torch.tensor([[True] * 5, [False] * 3 + [True] * 2])
    group = torch.tensor([0, 1, 0, 0, 1])  # each row's prompt
    positions = (real.long().cumsum(1) - 1).clamp(min=0)
    new = torch.randint(0, 40, (5, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        prompt_cache = KVCache(config, 2, 5, "cpu", torch.float32)
        small(ids, positions, prompt_cache, real)
        prefix = SharedPrefix(prompt_cache.k, prompt_cache.v, group, real)
        shared = KVCache(config, 5, 10, "cpu", torch.float32, prefix)
        rows = KVCache(config, 5, 15, "cpu", torch.float32)  # every row holding its prompt
        small(ids[group], positions[group], rows, real[group])
        row_real = torch.cat([real[group], torch.ones(5, 10, dtype=torch.bool)], dim=1)
        after = positions[group][:, -1:] + 1
        # two positions at once (causal among them), then one at a time; rows 1 and 3 leave
        for start, width in ((0, 2), (2, 1), (3, 1), (4, 2)):
            if start == 3:
                keep = torch.tensor([0, 4, 2])
                shared.select(keep, torch.tensor([1, 0, 1]) * shared.length)  # 0 and 2 stay
                rows.select(keep)
                new, after, row_real = new[keep], after[keep], row_real[keep]
            step = new[:, start : start + width]
            where = after + torch.arange(width)
            got = small(step, where, shared)
            expected = small(step, where, rows, row_real[:, : rows.length + width])
            assert (got - expected).abs().max() < 1e-5
            after = after + width
    assert shared.prefix.group.tolist() == [0, 1, 0]
    members = [
        (g, r if isinstance(r, slice) else r.tolist(), n) for g, r, n in shared.prefix.members
    ]
    assert members == [(0, [0, 2], 2), (1, slice(1, 2), 1)]  # contiguous rows as a slice


def test_relative_attention_copies_repeated_prompts_instead_of_sharing():
    config = ModelConfig(
        vocab_size=40, block_size=16, n_layer=1, n_head=2, n_embd=16, pos_embedding="relative"
    )
    torch.manual_seed(6)
    relative = GPT(config).eval()
    prompts = [[1, 2, 3], [1, 2, 3], [4]]
    together = generate(relative, prompts, 8, temperature=0.8, seed=2)
    assert together == [
        generate(relative, p, 8, temperature=0.8, seed=2, sample_ids=[i])
        for i, p in enumerate(prompts)
    ]


def test_cache_select_moves_only_what_a_row_does_not_hold():

    config = ModelConfig(vocab_size=8, block_size=16, n_layer=2, n_head=2, n_embd=8)
    cache = KVCache(config, 6, 16, torch.device("cpu"), torch.float32)
    cache.k.normal_(), cache.v.normal_()
    cache.length = 10
    cache.k[:, 4, :, :4] = cache.k[:, 5, :, :4]  # row 4 holds row 5's first 4 positions
    cache.v[:, 4, :, :4] = cache.v[:, 5, :, :4]
    index = torch.tensor([1, 1, 0, 3, 5])  # a repeat, a swap, a drop, shifts
    expected_k, expected_v = cache.k[:, index, :, :10].clone(), cache.v[:, index, :, :10].clone()
    cache.k[:, 1:, :, 10:] = float("nan")  # never read: past the filled positions
    cache.select(index, torch.tensor([0, 10, 0, 10, 4]))  # rows 1 and 3 stay; 4 holds 4
    assert cache.k.shape[1] == 5
    assert torch.equal(cache.k[:, :, :, :10], expected_k)
    assert torch.equal(cache.v[:, :, :, :10], expected_v)
    buffer = cache._k
    cache.select(torch.tensor([4, 0, 1, 2, 3, 0]))  # growing within the buffers' 6 rows
    assert cache._k is buffer and torch.equal(cache.k[:, 0, :, :10], expected_k[:, 4])
    assert torch.equal(cache.k[:, 5, :, :10], expected_k[:, 0])
    cache.select(torch.tensor([1, 1, 2, 2, 3, 3, 4, 4, 0, 0]))  # growing past them: new ones
    assert torch.equal(cache.k[:, 1, :, :10], expected_k[:, 0])
    assert torch.equal(cache.k[:, 9, :, :10], expected_k[:, 4])


def test_weights_are_packed_only_where_it_pays(model, monkeypatch):
    import copy

    from seqgen import cpu

    if not cpu.packing_available(model):
        pytest.skip("this torch build has no oneDNN packed linear")
    assert cpu.PackingTimer(model).pays() in (True, False)  # timed on this machine
    x = torch.randint(0, 40, (3, 12), generator=torch.Generator().manual_seed(3))
    for batched, single in ((False, False), (True, True), (True, False)):
        monkeypatch.setattr(
            cpu.PackingTimer, "pays", lambda _, rows=1, b=batched, s=single: b if rows > 1 else s
        )
        candidate = copy.deepcopy(model)
        assert cpu.pack_linears(candidate) is batched
        assert isinstance(candidate.lm_head, cpu.PackedLinear) is batched
        if batched:  # a single row keeps the plain weight where only batches gain
            assert (candidate.lm_head.weight is not None) is (not single)
            with torch.no_grad():
                assert (candidate(x) - model(x)).abs().max() < 1e-4
                assert (candidate(x[:1, -1:]) - model(x[:1, -1:])).abs().max() < 1e-4


def _forward_widths(model):
    """The batch width of each forward pass of `model`, as a list that fills while decoding."""
    widths = []
    handle = model.register_forward_pre_hook(lambda _, args: widths.append(args[0].shape))
    return widths, handle


@pytest.mark.parametrize(
    "options",
    [
        dict(temperature=0, eos_id=[4, 15]),
        dict(
            temperature=1.5,
            seed=7,
            eos_id=5,
            repetition_penalty=1.2,
            no_repeat_ngram_size=2,
            min_new_tokens=2,
        ),
    ],
)
def test_waiting_prompts_take_the_places_of_finished_rows(options):
    import random

    torch.manual_seed(8)
    model = GPT(ModelConfig(vocab_size=40, block_size=12, n_layer=2, n_head=2, n_embd=32)).eval()
    with torch.no_grad():
        model.transformer.wpe.weight.mul_(30)  # outputs that depend on positions
    rng = random.Random(1)
    prompts = [[rng.randrange(40) for _ in range(rng.randint(1, 15))] for _ in range(14)]
    prompts[3] = prompts[9] = prompts[0]  # repeats are prefilled once and copied
    limits = [rng.choice([0, 3, 8, 30]) for _ in prompts]  # 30: past the context, windows slide
    alone = [
        generate(model, p, n, sample_ids=[i], **options) if n else []
        for i, (p, n) in enumerate(zip(prompts, limits, strict=True))
    ]
    if options["temperature"] == 0:  # and each row is what a full recompute gives
        for prompt, out in zip(prompts, alone, strict=True):
            assert out == reference_greedy(model, prompt, len(out))
    done = []
    for batch_size in (1, 3, 5, None):
        together = generate(
            model, prompts, limits, batch_size=batch_size, on_done=done.append, **options
        )
        assert together == alone, batch_size
    assert sorted(done) == sorted(list(range(len(prompts))) * 4)  # every row, once per call
    assert len({len(row) for row in alone}) > 3 and max(map(len, alone)) > 12
    widths, handle = _forward_widths(model)
    generate(model, prompts, limits, batch_size=3, **options)
    handle.remove()
    steps = [shape for shape in widths if shape[1] == 1]  # one id per row: decoding steps
    waiting = len([n for n in limits if n]) - 3
    assert all(rows == 3 for rows, _ in steps[: waiting // 2])  # full while prompts wait


def test_samples_of_prompts_admitted_later_read_the_shared_prefix(model):
    prompts = [[1, 2, 3]] * 4 + [[5, 6, 7, 8, 9]] * 3 + [[30, 31]] * 3  # within the context
    sampled = dict(temperature=1.5, eos_id=5, seed=11)
    alone = [generate(model, p, 7, sample_ids=[i], **sampled) for i, p in enumerate(prompts)]
    for batch_size in (2, 4, None):
        assert generate(model, prompts, 7, batch_size=batch_size, **sampled) == alone
    assert len({len(row) for row in alone}) > 2


def test_a_wider_prompt_admitted_later_moves_the_rows_right():
    from seqgen.generation.rows import Rows

    torch.manual_seed(3)
    small = GPT(ModelConfig(vocab_size=40, block_size=24, n_layer=2, n_head=2, n_embd=32)).eval()
    short, wide = [[1, 2], [3]], [list(range(5, 20))]
    with torch.no_grad():
        rows = Rows(small, 24, most_rows=2)  # the third row grows the buffers
        rows.admit(short)
        rows.step(torch.tensor([7, 8]), [short[0] + [7], short[1] + [8]])
        assert rows.cache.length == 3
        admitted = rows.admit(wide)
        assert rows.cache.length == 15 and rows.real.sum(1).tolist() == [3, 2, 15]
        sequences = [short[0] + [7, 9], short[1] + [8, 9], wide[0] + [9]]
        logits = rows.step(torch.tensor([9, 9, 9]), sequences)
    assert torch.allclose(admitted[0], next_logits(small, wide[0]), atol=1e-5)
    for row, sequence in enumerate(sequences):
        assert torch.allclose(logits[row], next_logits(small, sequence), atol=1e-5)


def test_rows_joining_leaving_and_reordering_compute_what_each_sequence_gives():
    """Beams reordered within their prompt, prompts admitted and dropped at random, the
    cache trimmed as it fills: every row's logits equal a full recompute of its sequence."""
    import random

    from seqgen.generation.rows import Rows

    torch.manual_seed(9)
    small = GPT(ModelConfig(vocab_size=40, block_size=32, n_layer=2, n_head=2, n_embd=32)).eval()
    rng = random.Random(2)
    rows = Rows(small, 20, most_rows=12)  # 20 slots: rows admitted late make it fill and trim
    owners, sequences = [], []  # each row's prompt (search) and ids
    moved = trimmed = 0
    with torch.no_grad():
        for step in range(40):
            if len(set(owners)) < 3 and len(owners) <= 8:
                prompt = [rng.randrange(40) for _ in range(rng.randint(1, 9))]
                length = rows.cache.length
                logits = rows.admit([prompt])
                moved += rows.cache.length > length
                owners, sequences = owners + [step], sequences + [prompt]
                assert torch.allclose(logits[0], next_logits(small, prompt), atol=1e-5)
            # each prompt keeps 1-3 rows, each a copy of one of its rows (beams); one may end
            ending = {rng.choice(owners)} if step % 7 == 6 else set()
            ending |= {o for o, s in zip(owners, sequences, strict=True) if len(s) >= 16}
            index, new_owners = [], []
            for owner in dict.fromkeys(owners):
                if owner not in ending:  # (a row never holds more than the 20 slots)
                    mine = [r for r, o in enumerate(owners) if o == owner]
                    picks = [rng.choice(mine) for _ in range(rng.randint(1, 3))]
                    index, new_owners = index + picks, new_owners + [owner] * len(picks)
            same = [t < len(owners) and owners[t] == o for t, o in enumerate(new_owners)]
            rows.select(torch.tensor(index, dtype=torch.long), torch.tensor(same))
            owners, sequences = new_owners, [list(sequences[i]) for i in index]
            tokens = [rng.randrange(40) for _ in owners]
            for sequence, token in zip(sequences, tokens, strict=True):
                sequence.append(token)
            length = rows.cache.length
            logits = rows.step(torch.tensor(tokens), sequences)
            trimmed += rows.cache.length <= length
            for row, sequence in enumerate(sequences):
                assert torch.allclose(logits[row], next_logits(small, sequence), atol=1e-4), step
    assert moved and trimmed  # both ways a cache makes room were taken


def test_ban_within_a_group_keeps_its_probability():
    logits = torch.randn(12, generator=torch.Generator().manual_seed(0))
    before = torch.softmax(logits, -1)
    after = torch.softmax(ban_within(logits.clone(), [1, 2, 9], [0, 1, 2, 3]), -1)
    assert after[[1, 2, 9]].eq(0).all()
    group = before[:4].sum() / (1 - before[9])  # 9, outside the group, renormalises
    assert after[[0, 3]].sum().item() == pytest.approx(group.item(), rel=1e-5)
    ratio = after[0] / after[3]  # the heirs keep their own proportions
    assert ratio.item() == pytest.approx((before[0] / before[3]).item(), rel=1e-5)
    others = [4, 5, 6, 7, 8, 10, 11]  # outside the group: only 9's ban moves them
    assert torch.allclose(after[others], before[others] / (1 - before[9]), rtol=1e-5)
    plain = torch.softmax(ban_within(logits.clone(), [1, 2, 9], []), -1)  # a plain ban
    assert plain[[1, 2, 9]].eq(0).all() and not torch.allclose(after, plain)


class LowBanned(OddAfterEven):
    """A processor: ids below 20 banned."""

    group: list[int] = []

    def __call__(self, ids, logits):
        return ban_within(logits, list(range(20)), self.group)


class LowBannedSharedUpTo30(LowBanned):
    """The same, the probability of ids below 20 going to ids 20-29."""

    group = list(range(30))


@pytest.mark.parametrize("options", [dict(temperature=1.0, seed=3), dict(num_beams=2)])
def test_generation_passes_a_processors_banned_probability_on(model, options):
    prompts = [[1], [2, 3, 4], [12], [7, 7]]
    shared = generate(model, prompts, 24, processor=LowBannedSharedUpTo30, **options)
    plain = generate(model, prompts, 24, processor=LowBanned, **options)
    assert all(t >= 20 for row in shared + plain for t in row)
    heirs = lambda rows: sum(20 <= t < 30 for row in rows for t in row)  # noqa: E731
    assert heirs(shared) > heirs(plain)
