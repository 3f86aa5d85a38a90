"""seqgen.generation.batch: sampling (draws, top-k, top-p) and continuous batching."""

import pytest
import torch
from helpers import next_logits, reference_greedy

from seqgen.config import ModelConfig
from seqgen.generation.batch import filter_logits
from seqgen.generation.engine import generate
from seqgen.model import GPT


def _forward_widths(model):
    """The batch width of each forward pass of `model`, as a list that fills while decoding."""
    widths = []
    handle = model.register_forward_pre_hook(lambda _, args: widths.append(args[0].shape))
    return widths, handle


def test_draws_follow_the_distribution_and_skip_impossible_tokens():
    from seqgen.generation.batch import draw, random_streams

    probs = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.2, 0.0]]).repeat(4000, 1)
    counts = torch.bincount(draw(probs, random_streams(0, range(4000))), minlength=6)
    assert counts[[0, 2, 5]].sum() == 0
    assert torch.allclose(counts.double() / 4000, probs[0].double(), atol=0.03)


def test_nucleus_equals_a_full_sort(monkeypatch):
    from seqgen.generation import batch

    sorted_whole = []
    descending = batch._descending
    monkeypatch.setattr(
        batch, "_descending", lambda p: sorted_whole.append(len(p)) or descending(p)
    )
    generator = torch.Generator().manual_seed(0)
    # rows nearly flat (the nucleus holds most of 1,000 ids) to peaked, in one batch: the
    # largest NUCLEUS_FIRST probabilities settle some rows, the others are sorted whole
    scales = torch.tensor([0.01, 1.0, 8.0, 0.01, 8.0])[:, None]
    for _ in range(3):
        logits = scales * torch.randn(5, 1000, generator=generator)
        for top_p in (0.1, 0.5, 0.95):
            ordered, order = logits.sort(dim=-1, descending=True)
            probs = torch.softmax(ordered, dim=-1)
            drop = (probs.cumsum(-1) - probs >= top_p).scatter(
                -1, order, probs.cumsum(-1) - probs >= top_p
            )
            assert torch.equal(torch.isinf(batch._nucleus(logits, top_p)), drop)
    assert 0 < sum(sorted_whole) < 3 * 3 * 5  # both ways were taken


def test_bucketed_nucleus_equals_a_whole_sort():
    from seqgen.generation import batch

    generator = torch.Generator().manual_seed(0)
    # uniform (every id tied), nearly uniform, flat, broad, peaked rows of a large vocabulary
    scales = torch.tensor([0.0, 0.01, 1.0, 3.0, 6.0, 30.0])[:, None]
    logits = scales * torch.randn(6, batch.BUCKETED_FROM + 123, generator=generator)
    logits[3, :40] = logits[3].max()  # 40 ids tied for the largest
    probs = torch.softmax(logits, dim=-1)
    ordered = batch._descending(probs)
    for top_p in (0.05, 0.5, 0.9, 0.95, 0.99995):
        count = (~batch._outside(ordered, top_p)).sum(dim=-1, keepdim=True)
        least = ordered.gather(-1, count - 1)
        found, edge, exact = batch._bucketed_edge(probs, top_p)
        assert torch.equal(found[exact], count[exact]) and torch.equal(edge[exact], least[exact])
        kept, smallest = batch._nucleus_edge(probs, top_p)
        assert torch.equal(kept, count) and torch.equal(smallest, least)
        # past 0.9999 the mass never passes top_p by the margin: those rows are sorted whole
        assert exact.all() if top_p < 0.9999 else not exact.any()


def test_rows_take_buckets_where_they_are_timed_faster(monkeypatch):
    from seqgen.generation import batch

    generator = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(3, batch.BUCKETED_FROM, generator=generator), dim=-1)
    ordered = batch._descending(probs)
    count = (~batch._outside(ordered, 0.9)).sum(dim=-1, keepdim=True)
    expected = (count, ordered.gather(-1, count - 1))
    bucketed, timed = batch._bucketed_edge, batch.buckets_faster
    for faster in (True, False):
        calls = []
        monkeypatch.setattr(batch, "buckets_faster", lambda vocab, f=faster: f)
        monkeypatch.setattr(
            batch, "_bucketed_edge", lambda p, t, c=calls: c.append(p) or bucketed(p, t)
        )
        kept, least = batch._nucleus_edge(probs, 0.9)
        assert torch.equal(kept, expected[0]) and torch.equal(least, expected[1])
        assert bool(calls) is faster
    monkeypatch.setattr(batch, "buckets_faster", lambda vocab: pytest.fail("timed below the floor"))
    batch._nucleus_edge(probs[:, : batch.BUCKETED_FROM - 1].softmax(dim=-1), 0.9)
    assert isinstance(timed.__wrapped__(batch.BUCKETED_FROM), bool)  # timed here, uncached


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
