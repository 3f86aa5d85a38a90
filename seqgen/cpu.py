"""Faster CPU decoding: nn.Linear weights pre-packed in oneDNN's blocked layout.

Decoding multiplies every weight matrix by one vector per token, and PyTorch's default fp32
matrix-vector product reads weights at about a third of this machine's memory bandwidth;
oneDNN's packed layout reads them about twice as fast (see benchmarks/generate.py). Packing
is for inference only: a packed model has no trainable Linear weights and an untied lm_head.
"""

from __future__ import annotations

import torch
from torch import nn


class PackedLinear(nn.Module):
    """An nn.Linear for inference, its weight in oneDNN's packed layout."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 1)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AMX or AVX512-BF16). Elsewhere torch
    emulates bf16 matrix products: bf16 autocast trained 36x slower than fp32 on an AVX2 CPU."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # private, so look first
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def packing_available(model: nn.Module) -> bool:
    """Whether the model is on the CPU and this torch build and CPU have oneDNN's packed linear
    for its dtype."""
    parameter = next(model.parameters(), None)
    return (
        parameter is not None
        and parameter.device.type == "cpu"
        and (
            parameter.dtype == torch.float32
            # oneDNN packs bf16 only on AVX512 (BW/VL/DQ) or AVX-NE-CONVERT CPUs; AVX2 crashes
            or (parameter.dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        )
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


def pack_linears(model: nn.Module) -> bool:
    """Replace every nn.Linear of `model` (in place) by a PackedLinear; False if unavailable."""
    if not packing_available(model):
        return False
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, PackedLinear(child))
    return True
