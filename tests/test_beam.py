"""seqgen.generation.beam: beam search, alone and batched across prompts."""

import itertools

import torch
from helpers import first_new_at, next_logits

from seqgen.config import ModelConfig
from seqgen.generation.decoding import Settings
from seqgen.generation.engine import generate
from seqgen.model import GPT


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


def test_beam_search_keeps_eos_out_until_min_new_tokens(model):
    first = generate(model, [1], 1, num_beams=3)[0]  # made the end: the search stops at once
    assert generate(model, [1], 12, num_beams=3, eos_id=first) == []
    forced = generate(model, [1], 12, num_beams=3, eos_id=first, min_new_tokens=3)
    assert len(forced) >= 3 and first not in forced[:3]
