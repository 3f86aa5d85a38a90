"""Relative position attention (Music Transformer): the skewing trick equals the naive
O(L^2 D) computation, and a relative model decodes with its KV cache exactly."""

import pytest
import torch

from seqgen import relative
from seqgen.config import ModelConfig
from seqgen.generation.cache import causal_mask
from seqgen.generation.engine import generate
from seqgen.model import GPT
from seqgen.relative import RelativeAttention, relative_logits


def naive_relative_logits(q, rel, S):
    """Gather the embedding of every (query, key) distance, (nh, T, S, hs), then dot."""
    T, L = q.size(2), rel.size(1)
    i = torch.arange(S - T, S)[:, None]  # absolute positions of the queries
    j = torch.arange(S)[None, :]
    distance = (i - j).clamp(min=0, max=L - 1)  # future keys: any row, masked anyway
    pairs = rel[:, L - 1 - distance]  # (nh, T, S, hs)
    return torch.einsum("bhtd,htsd->bhts", q, pairs)


@pytest.mark.parametrize("T, S", [(7, 7), (1, 7), (3, 7), (5, 6)])
def test_skewing_equals_the_naive_computation(T, S):
    torch.manual_seed(0)
    q = torch.randn(2, 3, T, 5, dtype=torch.float64)
    rel = torch.randn(3, 8, 5, dtype=torch.float64)
    allowed = causal_mask(T, S, q.device)
    fast, naive = relative_logits(q, rel, S), naive_relative_logits(q, rel, S)
    assert fast.shape == (2, 3, T, S)
    assert torch.allclose(fast[..., allowed], naive[..., allowed], atol=1e-12)


def test_a_relative_model_decodes_with_its_cache_exactly():
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32, pos_embedding="relative"
    )
    model = GPT(config).eval()
    assert "transformer.wpe.weight" not in model.state_dict()
    assert model.transformer.h[0].attn.rel.shape == (2, 16, 16)
    prompt = [3, 14, 15, 9]
    new = generate(model, prompt, 10, temperature=0)
    ids = prompt + new
    with torch.no_grad():
        full = model(torch.tensor([ids]))[0]  # no cache: every position at once
    assert new == full[len(prompt) - 1 : -1].argmax(-1).tolist()
    # left-padded batches see the same relative distances as unpadded rows
    assert generate(model, [prompt, [7, *prompt]], 6, temperature=0)[0] == new[:6]


@pytest.mark.slow
def test_relative_attention_learns_and_its_embeddings_get_gradients():
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=20, block_size=12, n_layer=1, n_head=2, n_embd=16, pos_embedding="relative"
    )
    model = GPT(config)
    # a pattern only positions can explain: repeat the token seen 3 steps back
    seq = torch.randint(0, 20, (64, 3)).repeat(1, 5)[:, :13]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        logits = model(seq[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits[:, 3:].flatten(0, 1), seq[:, 4:].flatten())
        optimizer.zero_grad()
        loss.backward()
        losses.append(loss.item())
        optimizer.step()
    assert model.transformer.h[0].attn.rel.grad.abs().sum() > 0
    assert losses[-1] < 0.2 * losses[0]


def generic_relative_attention(q, k, v, rel):
    """The plain computation: relative logits as an additive mask of the full (T, T) scores."""
    T = q.size(2)
    bias = naive_relative_logits(q, rel, T) / q.size(-1) ** 0.5
    mask = bias.masked_fill(~causal_mask(T, T, q.device), float("-inf"))
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@pytest.mark.parametrize("T, block", [(23, 64), (23, 5), (64, 16), (150, 64)])
def test_blockwise_relative_attention_equals_the_plain_computation(T, block, monkeypatch):
    monkeypatch.setattr(relative, "BLOCK", block)  # one block, several, a ragged last one
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, T, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    rel = torch.randn(3, T + 4, 8, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, 3, T, 8, dtype=torch.float64)
    fast = RelativeAttention.apply(q, k, v, rel[:, 4:], causal_mask(T, T, q.device))
    plain = generic_relative_attention(q, k, v, rel[:, 4:])
    assert torch.allclose(fast, plain, atol=1e-12)
    ours = torch.autograd.grad(fast, (q, k, v, rel), grad)
    theirs = torch.autograd.grad(plain, (q, k, v, rel), grad)
    for mine, reference in zip(ours, theirs, strict=True):
        assert torch.allclose(mine, reference, atol=1e-10)


def test_a_relative_model_trains_through_the_blockwise_path_as_through_the_mask(monkeypatch):
    monkeypatch.setattr(relative, "BLOCK", 8)
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=30, block_size=32, n_layer=2, n_head=2, n_embd=16, pos_embedding="relative"
    )
    model = GPT(config).double()
    ids = torch.randint(0, 30, (3, 27))
    calls = []
    monkeypatch.setattr(
        RelativeAttention,
        "apply",
        lambda *a, f=RelativeAttention.apply: (calls.append(1), f(*a))[1],
    )
    fast = model(ids)
    assert len(calls) == config.n_layer  # the training path is the blockwise one
    fast_grads = torch.autograd.grad(fast.sum(), list(model.parameters()))
    # an explicit all-True padding mask takes the generic path: the same numbers
    plain = model(ids, padding_mask=torch.ones(3, 27, dtype=torch.bool))
    assert len(calls) == config.n_layer and torch.allclose(fast, plain, atol=1e-10)
    plain_grads = torch.autograd.grad(plain.sum(), list(model.parameters()))
    for ours, theirs in zip(fast_grads, plain_grads, strict=True):
        assert torch.allclose(ours, theirs, atol=1e-9)


def test_blockwise_relative_attention_under_bf16_autocast():
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=30, block_size=96, n_layer=1, n_head=2, n_embd=32, pos_embedding="relative"
    )
    model = GPT(config)
    ids = torch.randint(0, 30, (2, 96))
    reference = model(ids)
    reference_grad = torch.autograd.grad(reference.sum(), model.transformer.h[0].attn.rel)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(ids)
    grad = torch.autograd.grad(logits.float().sum(), model.transformer.h[0].attn.rel)[0]
    assert grad.dtype == torch.float32  # the embedding's own dtype
    assert (logits.float() - reference).abs().max() < 0.05 * reference.abs().max()
    assert (grad - reference_grad).norm() < 0.05 * reference_grad.norm()
