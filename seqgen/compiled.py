"""Functions compiled by TorchInductor and called directly, without TorchDynamo: its guard
checks before each call made decoding GPT-2 (49 products a token) ~10% slower on an AMD Zen 4.

A function is traced with symbolic sizes (`make_fx`) on example inputs and built once per kind
of input (device, dtypes, constants, one row or several), so that one build serves every layer
of a model and every length of its KV cache. A build checks its inputs' sizes against its
symbols, not the assumptions its tracing made, so:
- equal example sizes share a symbol, which the build then assumes equal: examples take sizes
  apart from each other (`sizes_apart`) wherever the real ones may differ;
- a traced size turned into a Python number (`math.sqrt` of it, a branch on it) is built in
  for every later call: such values are constants of the kind, given by the caller.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence

import torch
from torch.fx.experimental.proxy_tensor import make_fx

Examples = Callable[[Sequence[torch.Tensor], bool], list[torch.Tensor]]


def weights_outermost(rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """rows (R, K) times weight (N, K) -> (N, R) float32, written as a product and a sum with
    the weights outermost, so that a compiler fuses any conversion of the weights into the
    reduction and reads each weight row once for all R rows (the (N, R, K) product is never
    formed). Eager, it would form it: use it compiled (`CompiledFunction`)."""
    return (weight.float().unsqueeze(1) * rows.float()).sum(-1)


def channel_product(
    rows: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """rows (R, K) times weight (N, K), scaled per output channel (N,) where `scale` is given
    (int8 weights), plus bias (N,) where given -> (R, N), rounded to the rows' dtype: a
    Linear's product, written to be compiled (`weights_outermost`)."""
    product = weights_outermost(rows, weight)
    if scale is not None:
        product = product * scale.float()[:, None]
    product = product.t()
    if bias is not None:
        product = product + bias.float()
    # row-major as nn.Linear's output: the sums come as (N, R), and several rows transposed
    # gave the queries of a beam's step a last stride of R, which sent attention down
    # PyTorch's slower math path (59-75 against 32-36 us a layer at four rows)
    return product.to(rows.dtype).contiguous()


def product_examples(inputs: Sequence[torch.Tensor], one_row: bool) -> list[torch.Tensor]:
    """Examples for a product of rows (R, K), weight (N, K) and per-channel values (N,): sizes
    all different, so that R, K and N get a symbol each; several rows are traced at 3."""
    sizes = ((1 if one_row else 3, 64), (32, 64), (32,))
    return [
        torch.ones(size, dtype=t.dtype, device=t.device)
        for size, t in zip(sizes, inputs, strict=True)
    ]


def sizes_apart(inputs: Sequence[torch.Tensor], count: int) -> list[int]:
    """`count` different sizes of 2 or more that no input has (1 would be specialised)."""
    taken = {size for t in inputs for size in t.shape}
    free = (size for size in itertools.count(2) if size not in taken)
    return [next(free) for _ in range(count)]


class CompiledFunction:
    """`function(*tensors, **constants)` compiled by TorchInductor, built once per kind of input
    (device, dtypes, constants, and whether the first input holds one row or several) from
    `examples(tensors, one_row)`. Inputs must be laid out as the examples were (a build checks
    the sizes and strides it is given); sizes are symbolic, a batch of several rows is assumed
    to have two or more."""

    def __init__(self, function: Callable[..., object], examples: Examples) -> None:
        self.function = function
        self.examples = examples
        self._built: dict[tuple, Callable[..., object]] = {}
        self._building = threading.Lock()

    def __call__(self, *inputs: torch.Tensor, **constants) -> object:
        if inputs[0].shape[0] == 0:  # a build of several rows assumes two or more
            return self.function(*inputs, **constants)
        one_row = inputs[0].shape[0] == 1
        kind = (inputs[0].device, one_row, *(t.dtype for t in inputs), *sorted(constants.items()))
        compiled = self._built.get(kind)
        if compiled is None:
            compiled = self._build(kind, inputs, one_row, constants)
        return compiled(*inputs)

    def _build(
        self, kind: tuple, inputs: Sequence[torch.Tensor], one_row: bool, constants: dict
    ) -> Callable[..., object]:
        with self._building:
            if kind not in self._built:
                examples = self.examples(inputs, one_row)

                def traced(*tensors: torch.Tensor) -> object:
                    return self.function(*tensors, **constants)

                graph = make_fx(traced, tracing_mode="symbolic")(*examples)
                self._built[kind] = torch._inductor.standalone_compile(graph, examples)
        return self._built[kind]
