"""Weight-only int8 for inference (`--quantize int8`): each Linear's weight, the tied output
head's too, as int8 with one scale per output channel; the activations stay fp32 or bf16.

Decoding one token reads every weight once, so a quarter of fp32's bytes could make it up to
4x faster, if the product takes the int8 weights as fast as memory brings them. PyTorch's own
CPU kernel (`aten._weight_int8pack_mm`, which gpt-fast and torchao use) ran 3x *slower* than
fp32 on an Intel Xeon with AMX; a product that converts the weights to float inside its sum,
compiled by TorchInductor, ran faster there, but on an AMD Zen 4 a core converted them at
11 GB/s, below what memory gives. seqgen's own product (`kernels/int8_product.cpp`) keeps the
weights integers and turns each row of activations into integers instead, exactly enough to
stand for fp32 (see the file), and multiplies them by 16-bit integer dot products: on the
Zen 4 it read the weights at 27 GB/s against 20 for the compiled one. Which kernel wins
depends on the CPU, so `quantize_int8` times the candidates on the model's own shapes when it
loads and keeps the fastest. Inputs of many rows (a prompt's prefill, evaluation windows) are
compute-bound: there the weights are converted back and multiplied by the usual kernel.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Collection
from pathlib import Path
from typing import get_args

import torch
import torch.nn.functional as F
from torch import nn

from seqgen.compiled import CompiledFunction, channel_product, product_examples
from seqgen.cpu import compiled_available, linear_slots, step_sample
from seqgen.devices import Quantize
from seqgen.fused import fuse_blocks
from seqgen.timing import fastest_call

log = logging.getLogger("seqgen")
KERNEL_ROWS = 16  # inputs of at most this many rows take the timed int8 kernel
QUANTIZATIONS: tuple[str, ...] = get_args(Quantize)
# the candidates, in the order they are tried
KERNELS = ("integer", "fused", "int8pack", "dequantized")

Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _fused(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (R, K) times int8 weight (N, K) with scales (N,) -> (R, N), the conversion of the
    weights fused into the reduction (used compiled): `channel_product` without a bias, which
    `Int8Linear` adds."""
    return channel_product(x, weight, None, scale)


FUSED_PRODUCT = CompiledFunction(_fused, product_examples)


# The instruction sets `kernels/int8_product.cpp` has a branch for, best first. Built without
# the first i of them (their macros undefined), it compiles the branch after them, so that one
# CPU can check every branch (tests/test_quantize.py): each CPU runs only its own.
INSTRUCTION_SETS = ("__AVX512VNNI__", "__AVX512BW__", "__AVX2__")
PREFIX_INCLUDE = "#include <torch/csrc/inductor/cpp_prefix.h>\n"


def _integer(
    x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, without: tuple[str, ...] = ()
) -> torch.Tensor:
    """x (R, K) times int8 weight (N, K) with scales (N,) -> (R, N) by integer dot products,
    on the kernel built without the instruction sets `without` (of INSTRUCTION_SETS)."""
    rows = x.float().contiguous()
    y = torch.empty(rows.shape[0], weight.shape[0], dtype=torch.float32)
    _integer_build(without)(y, weight, rows, scale.float(), rows.shape[0], *weight.shape)
    return y.to(x.dtype)


@functools.cache
def _integer_build(without: tuple[str, ...] = ()) -> Callable[..., None] | None:
    """`kernels/int8_product.cpp` built for this CPU, less the instruction sets `without`
    (cached on disk by TorchInductor: about 3 s the first time), or None where it cannot be
    built."""
    unknown = set(without) - set(INSTRUCTION_SETS)
    source = (Path(__file__).parent / "kernels" / "int8_product.cpp").read_text()
    if unknown or (without and PREFIX_INCLUDE not in source):
        raise ValueError(f"cannot build the int8 product without {sorted(unknown or without)}")
    undefined = "".join(f"#undef {macro}\n" for macro in without)
    source = source.replace(PREFIX_INCLUDE, PREFIX_INCLUDE + undefined, 1)
    try:
        from torch._inductor.codecache import CppPythonBindingsCodeCache

        argtypes = ["float*", "const int8_t*", "const float*", "const float*"]
        return CppPythonBindingsCodeCache.load_pybinding(argtypes + ["const int64_t"] * 3, source)
    except Exception as err:  # no compiler, or a torch whose Inductor lacks this cache
        log.info("no integer int8 product here (%s: %s)", type(err).__name__, err)
        return None


def integer_kernel(device: torch.device) -> Kernel | None:
    """seqgen's C++ int8 product for `device` (CPUs only), or None where it cannot be built."""
    return _integer if device.type == "cpu" and _integer_build() is not None else None


def _int8pack(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten._weight_int8pack_mm(x, weight, scale.to(x.dtype))


def _dequantized(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return F.linear(x, weight.to(x.dtype)) * scale.to(x.dtype)


class Int8Linear(nn.Module):
    """An nn.Linear for inference with its weight as int8, one scale per output channel
    (symmetric: the channel's largest magnitude maps to 127). Inputs of up to KERNEL_ROWS rows
    use `kernel`; larger ones convert the weight back and use the usual product."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, kernel: Kernel) -> None:
        super().__init__()
        weight = weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127
        self.register_buffer("weight", torch.round(weight / scale[:, None]).to(torch.int8))
        self.register_buffer("scale", scale)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)  # (R, K)
        if rows.size(0) <= KERNEL_ROWS:  # contiguous, as the compiled kernel's builds were
            y = self.kernel(rows.contiguous(), self.weight, self.scale)
        else:
            y = _dequantized(rows, self.weight, self.scale)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)

    def dequantized_weight(self) -> torch.Tensor:
        """The weight as the product uses it: (N, K) float32."""
        return self.weight.float() * self.scale[:, None]


def candidate_kernels(device: torch.device, names: Collection[str] = KERNELS) -> dict[str, Kernel]:
    """Those of the int8 kernels `names` that can run here, only those built: seqgen's C++
    product and the fused one where TorchInductor can build them on a CPU (they need a C++
    compiler; the first builds cost about 3 and 20 s, cached on disk for later processes);
    PyTorch's int8 kernel; and converting the weight back, which always works."""
    found: dict[str, Kernel] = {}
    if "integer" in names and (integer := integer_kernel(device)) is not None:
        found["integer"] = integer
    if "fused" in names and compiled_available(device.type):
        found["fused"] = FUSED_PRODUCT
    if "int8pack" in names:
        probe = (
            torch.randn(2, 64, device=device),
            torch.ones(32, 64, dtype=torch.int8, device=device),
        )
        try:
            _int8pack(*probe, torch.ones(32, device=device))
            found["int8pack"] = _int8pack
        except (RuntimeError, NotImplementedError):
            pass
    if "dequantized" in names:
        found["dequantized"] = _dequantized
    return found


def computes_the_product(kernel: Kernel, layers: list[Int8Linear], dtype: torch.dtype) -> bool:
    """Whether `kernel` gives what converting the weights back gives, for one row of `dtype`
    through each of `layers`: a kernel is checked on the model's own widths before it is used.
    PyTorch's int8 kernel in bf16, at widths that are not a multiple of 16, read past the row
    (NaN, infinities, wrong sums, once a crash; torch 2.13 on an AMD Zen 4): it is not run
    there."""
    unsafe_widths = any(layer.in_features % 16 for layer in layers)
    if kernel is _int8pack and dtype != torch.float32 and unsafe_widths:
        return False
    generator = torch.Generator().manual_seed(0)
    for layer in layers:
        x = torch.randn(1, layer.in_features, generator=generator).to(layer.weight.device, dtype)
        expected = _dequantized(x.float(), layer.weight, layer.scale.float())
        found = kernel(x, layer.weight, layer.scale).float()
        tolerance = 1e-3 if dtype == torch.float32 else 5e-2
        if not (found - expected).abs().max() <= tolerance * expected.abs().max().clamp(min=1):
            return False
    return True


def fastest_kernel(layers: list[Int8Linear], dtype: torch.dtype) -> tuple[str, Kernel]:
    """The kernel (its name, itself) that runs a decoding step's products (`layers`: one block's
    Linears and the head) fastest on this machine at one row, timed in turns, among those
    that compute the product right for these layers."""
    device = layers[0].weight.device
    kernels = candidate_kernels(device)
    for name in [name for name, k in kernels.items() if not computes_the_product(k, layers, dtype)]:
        log.warning("quantize int8: the %s kernel computes wrong products here: not used", name)
        del kernels[name]
    if len(kernels) == 1:
        return next(iter(kernels.items()))
    inputs = [torch.randn(1, layer.in_features, dtype=dtype, device=device) for layer in layers]

    def step(kernel: Kernel) -> Callable[[], None]:
        def run() -> None:
            for layer, x in zip(layers, inputs, strict=True):
                kernel(x, layer.weight, layer.scale)

        return run

    name = fastest_call({name: step(k) for name, k in kernels.items()})
    return name, kernels[name]


def quantize_int8(model: nn.Module, kernel: str | None = None) -> str:
    """Replace every nn.Linear of `model` (in place; a tied head gets its own int8 copy, the
    embedding stays as it was) by an Int8Linear using `kernel` (one of KERNELS), or by
    default the one that `fastest_kernel` picks here, and then fuse each block's one-row
    decoding step (seqgen/fused.py, with the compiled product) where that is timed faster
    here; returns the kernel's name."""
    parameter = next(model.parameters())
    linears = linear_slots(model)
    if not linears:
        raise ValueError("quantize int8: the model has no Linear layers")
    layers = [Int8Linear(child.weight, child.bias, _dequantized) for _, _, child in linears]
    if kernel is None:
        chosen, run = fastest_kernel(step_sample(layers), parameter.dtype)
    else:
        found = candidate_kernels(parameter.device, [kernel])  # builds that one only
        if kernel not in found:
            raise ValueError(
                f"quantize int8: no {kernel} kernel here (kernels: {', '.join(KERNELS)})"
            )
        if not computes_the_product(found[kernel], step_sample(layers), parameter.dtype):
            raise ValueError(f"quantize int8: the {kernel} kernel computes wrong products here")
        chosen, run = kernel, found[kernel]
    for (module, name, _), layer in zip(linears, layers, strict=True):
        layer.kernel = run
        setattr(module, name, layer)
    timed = kernel is None and compiled_available(parameter.device.type)
    fused = timed and fuse_blocks(model, timed=True)
    log.info(
        "quantize int8: %d Linear weights as int8 (%s kernel%s)",
        len(layers),
        chosen,
        ", one-row steps fused" if fused else "",
    )
    return chosen
