"""Relative position attention (Music Transformer): the skewing trick equals the naive
O(L^2 D) computation, and a relative model decodes with its KV cache exactly."""

import pytest
import torch

from seqgen.config import ModelConfig
from seqgen.engine import generate
from seqgen.model import GPT, causal_mask, relative_logits


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
    config = ModelConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32,
                         pos_embedding="relative")  # fmt: skip
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


def test_relative_attention_learns_and_its_embeddings_get_gradients():
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=20, block_size=12, n_layer=1, n_head=2, n_embd=16,
                         pos_embedding="relative")  # fmt: skip
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
