"""A block's decoding step as two compiled calls instead of some twenty operations.

Decoding one token reads every weight once; what a step spends besides is the operations
between the products (layer norms, the split into heads, attention, GELU, the residual
additions, conversions), each a call of its own. On an AMD Zen 4 they cost GPT-2 124M ~3.5
ms of an 11 ms bf16 token. A `FusedBlock` runs the step of one row as two functions compiled
by TorchInductor (seqgen/compiled.py), with the products inside (`weights_outermost`): the
attention's inputs (ln_1, c_attn, the heads), then the block's rest (attention over the KV
cache, c_proj, ln_2, the MLP, both residuals). Between the two the new keys and values are
written to the cache. It rounds where the eager block does (after each product, norm and
residual addition, in the model's dtype).

`seqgen.cpu.fast_linears` fuses the blocks of a model whose one-row steps run the compiled
product, and `seqgen.quantize.quantize_int8` those of a model with int8 weights where a whole
step is timed faster fused. Every other step (a prompt, several rows, a mask, a shared
prompt, training) runs the block as written in seqgen/model.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from seqgen.compiled import CompiledFunction, channel_product, sizes_apart
from seqgen.generation.cache import KVCache
from seqgen.model import GPT, Block, CausalSelfAttention
from seqgen.timing import fastest_call

STEP_KEYS = 64  # the positions before the step that `fuse_blocks(timed=True)` times


def _norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    return F.layer_norm(x.float(), x.shape[-1:], weight.float(), bias.float(), eps).to(x.dtype)


def attention_inputs(
    x: torch.Tensor,
    *weights: torch.Tensor,
    heads: int,
    head_size: int,
    eps: float,
    cache_dtype: torch.dtype,
) -> tuple[torch.Tensor, ...]:
    """x (B, C) -> queries, keys and values (B, 3, nh, hs) in the cache's dtype, and ln_1(x)
    (B, C). weights: ln_1's (weight, bias), c_attn's (weight, bias, scale).

    The norm is returned so that it is computed once: a value used only inside a product's
    sum is recomputed there for every output channel. No output is a view of another: the
    compiled call would rebuild such views in Python, which cost GPT-2 ~1.8 ms a token."""
    h = _norm(x, *weights[:2], eps)
    qkv = channel_product(h, *weights[2:]).view(x.shape[0], 3, heads, head_size).to(cache_dtype)
    return qkv.contiguous(), h  # a product of several rows comes transposed


def block_rest(
    x: torch.Tensor,
    qkv: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    *weights: torch.Tensor,
    head_size: int,
    eps: float,
    approximate: str,
) -> tuple[torch.Tensor, ...]:
    """x (B, C), `attention_inputs`' qkv (B, 3, nh, hs) and the keys and values so far
    (B, nh, S, hs) -> the block's output (B, C); then ln_2's output and the GELU's, returned
    to be computed once (see `attention_inputs`). weights: c_proj's (weight, bias, scale),
    ln_2's (weight, bias), c_fc's and the MLP's c_proj's (weight, bias, scale)."""
    proj, norm, fc, out = weights[:3], weights[3:5], weights[5:8], weights[8:]
    B, _, nh, hs = qkv.shape
    q = qkv[:, 0].float()
    scale = 1 / math.sqrt(head_size)  # a constant: of a traced size, it would be built in
    scores = (keys.float() * q[:, :, None, :]).sum(-1) * scale  # (B, nh, S)
    attention = torch.softmax(scores, dim=-1)
    y = (attention[..., None] * values.float()).sum(2).reshape(B, nh * hs).to(x.dtype)
    x = x + channel_product(y, *proj)
    h = _norm(x, *norm, eps)
    gelu = F.gelu(channel_product(h, *fc), approximate=approximate)
    return (x + channel_product(gelu, *out)).contiguous(), h, gelu


def _attention_examples(inputs: Sequence[torch.Tensor], one_row: bool) -> list[torch.Tensor]:
    """The inputs' own sizes but for the rows, traced at a size apart when several."""
    rows = 1 if one_row else sizes_apart(inputs, 1)[0]
    x, *weights = inputs
    return [x.new_ones(rows, x.shape[1]), *(torch.ones_like(w) for w in weights)]


def _rest_examples(inputs: Sequence[torch.Tensor], one_row: bool) -> list[torch.Tensor]:
    """The inputs' own sizes but for the rows and the keys (S), each traced at a size apart;
    the keys and values as the cache holds them, a slice of a longer buffer (L > S)."""
    rows, keys, slots = sizes_apart(inputs, 3)
    rows = 1 if one_row else rows
    x, qkv, k, v, *weights = inputs
    _, nh, _, hs = k.shape
    cached = [t.new_ones(rows, nh, slots, hs)[:, :, :keys] for t in (k, v)]
    return [x.new_ones(rows, x.shape[1]), qkv.new_ones(rows, 3, nh, hs), *cached] + [
        torch.ones_like(w) for w in weights
    ]


ATTENTION_INPUTS = CompiledFunction(attention_inputs, _attention_examples)
BLOCK_REST = CompiledFunction(block_rest, _rest_examples)


class FusedBlock(Block):
    """A Block (same modules, same parameter names) whose decoding steps of one row run fused;
    every other call runs Block.forward."""

    def __init__(self, block: Block) -> None:
        nn.Module.__init__(self)  # not Block's: the block's own modules, not new ones
        for name, module in block.named_children():
            self.add_module(name, module)
        self.train(block.training)
        attn, mlp = self.attn, self.mlp
        self.heads = attn.n_head
        self.eps = self.ln_1.eps
        self.approximate = mlp.gelu.approximate
        self.head_size = attn.c_proj.in_features // self.heads
        self.first = self._tensors((self.ln_1, attn.c_attn))
        self.second = self._tensors((attn.c_proj, self.ln_2, mlp.c_fc, mlp.c_proj))

    @staticmethod
    def _tensors(modules: Sequence[nn.Module]) -> list[torch.Tensor]:
        """Each module's weight, its bias (zeros where it has none) and, for a product, its
        scales per output channel (an int8 weight's own, ones for a float one)."""
        tensors = []
        for module in modules:
            weight, bias, scale = module.weight, module.bias, None
            if not isinstance(module, nn.LayerNorm):
                scale = getattr(module, "scale", None)
                scale = weight.new_ones(weight.shape[0]) if scale is None else scale
            # a missing bias: zeros of the scales' dtype (float32 for int8 weights)
            zeros = torch.zeros_like(weight if scale is None else scale)
            tensors += [weight, zeros if bias is None else bias]
            tensors += [] if scale is None else [scale]
        return [t.detach().contiguous() for t in tensors]

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        B, T, C = x.shape
        if (
            T > 1
            or B > 1
            or mask is not None
            or cache is None
            or cache.prefix is not None
            or self.training
            or torch.is_grad_enabled()
        ):
            return super().forward(x, mask, cache, layer)
        rows = x.reshape(B, C).contiguous()
        qkv, _ = ATTENTION_INPUTS(
            rows,
            *self.first,
            heads=self.heads,
            head_size=self.head_size,
            eps=self.eps,
            cache_dtype=cache.k.dtype,
        )
        keys, values = cache.update(layer, qkv[:, 1, :, None], qkv[:, 2, :, None])
        out, *_ = BLOCK_REST(
            rows,
            qkv,
            keys,
            values,
            *self.second,
            head_size=self.head_size,
            eps=self.eps,
            approximate=self.approximate,
        )
        return out.view(B, T, C)


def fuse_blocks(model: nn.Module, timed: bool = False) -> bool:
    """Fuse the one-row decoding steps of every block of a GPT with GPT-2's attention (Music
    Transformer's relative attention runs as written), in place. With `timed`, only where a
    one-row decoding step of the whole model runs faster fused on this machine (int8 weights:
    fused, they are multiplied by the compiled product, not by the kernel timed fastest for
    them alone). Returns whether it fused any block."""
    if not isinstance(model, GPT):
        return False
    written = list(model.transformer.h)
    fused = [
        FusedBlock(block)
        if type(block) is Block and type(block.attn) is CausalSelfAttention
        else block
        for block in written
    ]
    if fused == written or (timed and not _fused_step_faster(model, written, fused)):
        return False
    _use(model, fused)
    return True


def _use(model: GPT, blocks: list[Block]) -> None:
    for i, block in enumerate(blocks):
        model.transformer.h[i] = block


def _fused_step_faster(model: GPT, written: list[Block], fused: list[Block]) -> bool:
    """Whether a decoding step of one row after STEP_KEYS positions (fewer for a short context)
    runs faster with the `fused` blocks than with the `written` ones, timed in turns (keys and
    values in the model's dtype for both)."""
    parameter = next(model.parameters())
    keys = min(STEP_KEYS, model.config.block_size - 1)
    ids = torch.zeros(1, keys + 1, dtype=torch.long, device=parameter.device)
    cache = KVCache(model.config, 1, keys + 1, parameter.device, parameter.dtype)
    with torch.inference_mode():
        model(ids[:, :keys], cache=cache)

    def step(blocks: list[Block]) -> Callable[[], None]:
        def run() -> None:
            _use(model, blocks)
            cache.length = keys
            model(ids[:, keys:], cache=cache)

        return run

    faster = fastest_call({"fused": step(fused), "written": step(written)}) == "fused"
    _use(model, written)
    return faster
