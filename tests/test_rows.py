"""seqgen.generation.rows and cache: rows that join, leave, reorder and share prompts on one
KV cache."""

import torch
from helpers import next_logits

from seqgen.config import ModelConfig
from seqgen.generation.cache import KVCache
from seqgen.generation.engine import generate
from seqgen.model import GPT


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


def test_prompts_of_unlike_lengths_are_prefilled_in_groups_each_as_alone(monkeypatch):
    """Admitted together, prompts of 1-17 ids are prefilled in groups of like lengths (no row
    more than half padding), and each row's logits, then and a step later, are its own."""
    from seqgen.generation.rows import Rows, length_groups

    assert length_groups([4, 40, 21, 20, 11, 10, 5, 40]) == [[1, 2, 7], [3, 4], [5], [0, 6]]
    assert length_groups([3, 3, 3]) == [[0, 1, 2]]  # one group, in the given order
    torch.manual_seed(4)
    small = GPT(ModelConfig(vocab_size=40, block_size=32, n_layer=2, n_head=2, n_embd=32)).eval()
    prompts = [[(7 * i + j) % 40 for j in range(n)] for i, n in enumerate([1, 9, 3, 17, 2, 8])]
    batches = []
    prefill_alike = Rows._prefill_alike

    def recorded(self, sequences, windows):
        batches.append(sorted(map(len, windows)))
        return prefill_alike(self, sequences, windows)

    monkeypatch.setattr(Rows, "_prefill_alike", recorded)
    rows = Rows(small, 24, most_rows=6)
    with torch.no_grad():
        logits = rows.admit(prompts)
        sequences = [prompt + [5] for prompt in prompts]
        after = rows.step(torch.tensor([5] * 6), sequences)
    assert batches == [[9, 17], [8], [2, 3], [1]]  # each above half its longest
    for row, prompt in enumerate(prompts):
        assert torch.allclose(logits[row], next_logits(small, prompt), atol=1e-5)
        assert torch.allclose(after[row], next_logits(small, sequences[row]), atol=1e-5)
