"""Music Transformer's relative attention: logits q_i . E(i - j) beside q_i . k_j, one learned
embedding E(d) per distance d and head.

`relative_logits` forms only Q E^T, (B, nh, T, S), never the (T, S, hs) embeddings of every
pair, and reads it through a skewed view ("skewing", Huang et al. 2018), copying nothing.

`RelativeAttention` trains it on CPU without materialising the whole (B, nh, T, T) score
tensor: a relative bias that needs a gradient keeps PyTorch's attention off its fused kernel,
and its generic path ran a 4-layer music model's training step 7.8x slower than learned
positions. Here the queries go in blocks of BLOCK: each block's bias feeds the fused kernel in
the forward pass (keys after the block are never touched: half the work of a full mask), and
the backward pass recomputes one block at a time from the saved log-sum-exp. That step now
takes 1.8-2.0x the learned one (benchmarks/music.py). Equal to the generic computation to
float64 precision (tests/test_relative_attention.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

BLOCK = 64  # queries per block; 32-128 measured within 20%, 1024 (one block) 4x slower
_FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


def skewed(qe: torch.Tensor) -> torch.Tensor:
    """qe (B, nh, T, S), contiguous, [i, m] = q_i . E(S - 1 - m), seen as (B, nh, T, S) with
    [i, j] = qe[i, j + T - 1 - i]: q_i . E(distance from key j to query i), for the last T
    of S positions. A view: row i starts T - 1 - i entries in; where the key is after the
    query it reads the next row (garbage, to be masked)."""
    B, nh, T, S = qe.shape
    batch, head = qe.stride()[:2]
    return qe.as_strided((B, nh, T, S), (batch, head, S - 1, 1), qe.storage_offset() + T - 1)


def unskewed(grad: torch.Tensor) -> torch.Tensor:
    """The adjoint of `skewed` over the positions a query may see: [i, m] = grad[i, m - (T - 1
    - i)], or 0 where that key would be before position 0. A copy (padding) and a view."""
    B, nh, T, S = grad.shape
    padded = F.pad(grad, (T, 0))  # (B, nh, T, S + T)
    batch, head = padded.stride()[:2]
    return padded.as_strided(
        (B, nh, T, S), (batch, head, S + T + 1, 1), padded.storage_offset() + 1
    )


def relative_logits(q: torch.Tensor, rel: torch.Tensor, S: int) -> torch.Tensor:
    """q: (B, nh, T, hs), the queries of the last T of S positions; rel: (nh, L, hs), row
    L - 1 - d embedding distance d. Returns (B, nh, T, S) whose [i, j] is q_i . E(d) with d
    the distance from key j to query i, wherever the query may see the key (elsewhere it is
    garbage, to be masked)."""
    e = rel[:, rel.size(1) - S :]  # (nh, S, hs), distances S - 1 ... 0
    return skewed(q @ e.transpose(-2, -1).to(q.dtype))


def _block_bias(
    q: torch.Tensor, e: torch.Tensor, allowed: torch.Tensor, scale: float
) -> torch.Tensor:
    """Scaled relative logits of a block of queries (B, nh, c, hs) over keys (nh, b, hs)
    before its end, -inf where `allowed` (c, b) forbids."""
    bias = skewed(q @ e.transpose(-2, -1)) * scale
    return bias.masked_fill_(~allowed, float("-inf"))


class RelativeAttention(torch.autograd.Function):
    """Causal self-attention with relative logits, (B, nh, T, hs) -> (B, nh, T, hs), on CPU.

    forward(q, k, v, e, allowed): e (nh, T, hs) embeds distances T - 1 ... 0; allowed is the
    (T, T) causal mask. Blocks of queries [a, b) attend over keys [0, b).
    """

    @staticmethod
    def forward(ctx, q, k, v, e, allowed):  # noqa: D102 (see the class)
        T, hs = q.shape[2:]
        scale, e_dtype, e = 1.0 / math.sqrt(hs), e.dtype, e.to(q.dtype)
        out = torch.empty_like(q)
        lse = q.new_empty(q.shape[:3], dtype=_accumulator(q.dtype))
        for a, b in _blocks(T):
            bias = _block_bias(q[:, :, a:b], e[:, T - b :], allowed[a:b, :b], scale)
            out[:, :, a:b], lse[:, :, a:b] = _FLASH(
                q[:, :, a:b], k[:, :, :b], v[:, :, :b], attn_mask=bias, scale=scale
            )
        ctx.save_for_backward(q, k, v, e, allowed, out, lse)
        ctx.e_dtype = e_dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        # Per block: P = softmax(S) from the saved log-sum-exp, dS = P (dP - rowsum(dO O)), and
        # the relative logits' gradient is dS read back through the skew.
        q, k, v, e, allowed, out, lse = ctx.saved_tensors
        T, hs = q.shape[2:]
        scale, acc = 1.0 / math.sqrt(hs), _accumulator(q.dtype)
        grad_out = grad_out.to(q.dtype)
        dq = torch.empty(q.shape, dtype=acc)
        dk, dv = torch.zeros(k.shape, dtype=acc), torch.zeros(v.shape, dtype=acc)
        de = torch.zeros(e.shape, dtype=acc)
        delta = (grad_out.to(acc) * out.to(acc)).sum(-1, keepdim=True)  # (B, nh, T, 1)
        for a, b in _blocks(T):
            qb, gb, eb = q[:, :, a:b], grad_out[:, :, a:b], e[:, T - b :]
            kb, vb = k[:, :, :b], v[:, :, :b]
            scores = _block_bias(qb, eb, allowed[a:b, :b], scale).to(acc)
            scores.add_((qb @ kb.transpose(-2, -1)).to(acc), alpha=scale)
            p = scores.sub_(lse[:, :, a:b, None]).exp_()  # (B, nh, c, b)
            ds = (gb @ vb.transpose(-2, -1)).to(acc).sub_(delta[:, :, a:b]).mul_(p)
            p, ds = p.to(q.dtype), ds.to(q.dtype)
            dv[:, :, :b] += p.transpose(-2, -1) @ gb
            dk[:, :, :b] += (ds.transpose(-2, -1) @ qb) * scale
            d_qe = unskewed(ds)
            dq[:, :, a:b] = (ds @ kb + d_qe @ eb) * scale
            de[:, T - b :] += (d_qe.transpose(-2, -1) @ qb).sum(0) * scale
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), de.to(ctx.e_dtype), None


def _accumulator(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _blocks(T: int) -> list[tuple[int, int]]:
    return [(a, min(a + BLOCK, T)) for a in range(0, T, BLOCK)]
