"""What this CPU computes fastest, decided by timing the model at hand, not by CPU flags alone.

Decoding multiplies every weight matrix by one vector per token: its speed is how fast the
weights are read, and which kernel reads them fastest depends on the CPU. On an AMD EPYC Zen 4
(2 cores) PyTorch's default fp32 product read weights at 12 GB/s on one core or two, oneDNN's
packed layout at 19-26 GB/s, and a compiled reduction (`weights_outermost`) at 22-31 GB/s; at
2-4 rows (a beam search of one prompt) the compiled reduction read GPT-2's weights at 25-30 GB/s
and the packed layout at 18; on an Intel Xeon with AMX the default beat packing for one row and
lost for eight. So `fast_linears` times the model's own shapes at 1, FEW_ROWS and BATCH_ROWS
rows with each candidate and keeps the fastest for each (see benchmarks/generate.py); many rows
are timed at two batch sizes, for their best kernel moves with the size: a 4-layer model of width
256 ran 8 rows 3% faster with nn.Linear and 32 rows 19% faster packed (AMD Zen 4). Inference
only: the model's Linears are no longer trainable, and the tied lm_head gets its own copy.

Training under bf16 autocast is 2x faster than fp32 for a 10M-parameter model on a CPU with
AMX, yet slower for a 1M one on some CPUs with AVX512-BF16, and 36x slower without bf16
hardware; `training_step_seconds` times both on the model's own batch shape.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from seqgen.compiled import CompiledFunction, channel_product, product_examples
from seqgen.fused import fuse_blocks
from seqgen.timing import fastest_call, median_seconds, seconds_in_turns

log = logging.getLogger("seqgen")
FEW_ROWS = 4  # inputs of 2 to this many rows (one prompt's beams) take a kernel of their own
# the rows of the batched decoding steps that the kernel for many rows is timed at: a batch just
# past FEW_ROWS, and generate_many's default batch
BATCH_ROWS = (8, 32)
# A kernel this many times slower than the fastest at a batch size is not timed at the next:
# GPT-2's nn.Linear ran 8 rows 2.3x slower than packed (and 32 rows 1.9x), and timing it at 32
# rows as well cost 1.1 s of a load
CLOSE_CALL = 1.5
KERNELS = ("plain", "packed", "compiled")  # the products an InferenceLinear can run
# Below this many bytes of Linear weights the compiled products are no candidate: building
# them (and the fused blocks) adds ~4 s to a process's first generation (15-20 s the first
# time on a machine), more than a short generation of a small model saves. Per token they are
# faster there too: on an AMD Zen 4 a 16 MiB model decoded one row 2.05x faster fused than on
# the better of nn.Linear and packing, a 3.5 MiB one 1.67x; decoding did not read its weights
# from the caches as the timing at load does (packed: 87 us a product against 19-63 us).
COMPILED_MIN_BYTES = 32 * 2**20
TIMED_STEPS = 2  # training steps timed per precision, after one warm-up step each
PROBE_TOKENS = 4096  # at most this many tokens per timed training step (the batch is cut)


LINEAR_PRODUCT = CompiledFunction(channel_product, product_examples)


@functools.cache
def compiled_available(device_type: str) -> bool:
    """Whether TorchInductor can build a compiled product here (on a CPU it needs a C++
    compiler). The first build on a machine costs 17-20 s (cached on disk), later processes
    about 5 s (GPT-2 124M on an AMD Zen 4)."""
    try:
        with torch.inference_mode():  # decoding's one-row fp32 build, which it then reuses
            probe = (torch.randn(1, 64), torch.ones(32, 64), torch.ones(32))
            LINEAR_PRODUCT(*(t.to(device_type) for t in probe))
    except Exception as err:  # no compiler, or none for this device: the eager kernels still work
        log.info("no compiled product here (%s: %s)", type(err).__name__, err)
        return False
    return True


class InferenceLinear(nn.Module):
    """An nn.Linear for inference on the CPU whose products run on the kernel timed fastest
    here for their size: `one_row` for an input of one row (a decoding step), `few_rows` for
    2 to FEW_ROWS rows (one prompt's beams or samples), `many_rows` for more. Kernels: `plain`
    (nn.Linear's), `packed` (the weight in oneDNN's packed layout) and `compiled`
    (`weights_outermost`, compiled by seqgen/compiled.py). Only the weight layouts that its
    kernels read are kept."""

    def __init__(self, linear: nn.Linear, one_row: str, few_rows: str, many_rows: str) -> None:
        super().__init__()
        kernels = (one_row, few_rows, many_rows)
        if not set(kernels) <= set(KERNELS):
            raise ValueError(f"kernels must be among {', '.join(KERNELS)}: {', '.join(kernels)}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.one_row, self.few_rows, self.many_rows = kernels
        weight = linear.weight.detach()
        uses = set(kernels)
        # contiguous: the compiled product's builds check the strides they were built with
        self.weight = weight.contiguous() if uses & {"plain", "compiled"} else None
        self.packed = (
            torch.ops.mkldnn._reorder_linear_weight(weight, 1) if "packed" in uses else None
        )
        self.bias = None if linear.bias is None else linear.bias.detach()
        # the compiled product always adds a bias: one compiled variant, not two
        self.compiled_bias = None
        if "compiled" in uses:
            self.compiled_bias = (
                weight.new_zeros(weight.shape[0]) if self.bias is None else self.bias.contiguous()
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        count = x.numel() // self.in_features
        kernel = (
            self.one_row if count == 1 else self.few_rows if count <= FEW_ROWS else self.many_rows
        )
        if kernel == "packed":
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        if kernel == "compiled":
            rows = x.reshape(-1, self.in_features).contiguous()
            y = LINEAR_PRODUCT(rows, self.weight, self.compiled_bias)
            return y.reshape(*x.shape[:-1], self.out_features)
        return nn.functional.linear(x, self.weight, self.bias)


@functools.cache
def float_attention_faster(heads: int, head_size: int) -> bool:
    """Whether a bf16 model's decoding attends faster over float32 keys and values than over
    bf16 ones here, timed once per shape of head. On an AMD Zen 4 PyTorch's bf16 attention
    for one query a row ran 3.5-4x slower than float32's (GPT-2's heads, 100-300 keys, 1-16
    rows), so there a bf16 model keeps its cache in float32."""
    rows, keys = 4, 256
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(rows, heads, n, head_size, generator=generator) for n in (1, keys, keys))
    half = [t.bfloat16() for t in (q, k, v)]
    calls = {  # bf16 first: float32 only where strictly faster
        "bfloat16": lambda: F.scaled_dot_product_attention(*half),
        "float32": lambda: F.scaled_dot_product_attention(q, k, v),
    }
    return fastest_call(calls) == "float32"


def cache_dtype(
    dtype: torch.dtype, device: torch.device, heads: int, head_size: int
) -> torch.dtype:
    """The dtype of the keys and values a decoding KV cache holds for a model of `dtype`: its
    own, or float32 for a bf16 model on a CPU whose float32 attention is faster
    (`float_attention_faster`). Attention then runs in float32 (as exact as bf16's, or more)."""
    if (
        dtype == torch.bfloat16
        and device.type == "cpu"
        and float_attention_faster(heads, head_size)
    ):
        return torch.float32
    return dtype


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


def linear_slots(model: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    """Every nn.Linear of `model`, in `model.modules()` order (a block's c_attn, c_proj, c_fc,
    c_proj, ..., the head), with the module and attribute name that hold it."""
    holders = {
        id(child): (module, name)
        for module in model.modules()
        for name, child in module.named_children()
    }
    return [(*holders[id(m)], m) for m in model.modules() if isinstance(m, nn.Linear)]


def step_sample(layers: list[nn.Module]) -> list[nn.Module]:
    """The products that stand for a decoding step when it is timed: the first block's four
    Linears (c_attn, c_proj, c_fc, c_proj) and the head, of `layers` in `linear_slots` order."""
    return layers[:4] + layers[-1:]


class KernelTimer:
    """Times a decoding step's products (the first block's Linears and the head, `step_sample`)
    on this machine with each candidate kernel; each candidate's layers are built once."""

    def __init__(self, model: nn.Module, kernels: Sequence[str]) -> None:
        sample = step_sample([linear for *_, linear in linear_slots(model)])
        self.dtype = sample[0].weight.dtype
        self.layers = {k: [InferenceLinear(layer, k, k, k) for layer in sample] for k in kernels}

    def fastest(self, counts: Sequence[int], among: Sequence[str]) -> str:
        """The kernel of `among` that runs a step of each of `counts` rows least slower than
        the fastest kernel there: the smallest of its worst ratios to the fastest
        (`median_seconds`); for one count, the fastest. A kernel CLOSE_CALL times slower
        than the fastest at one count is not timed at the next."""
        worst = dict.fromkeys(among, 0.0)
        for rows in counts:
            times = median_seconds({kernel: self._step(kernel, rows) for kernel in worst})
            best = min(times.values())
            worst = {kernel: max(worst[kernel], times[kernel] / best) for kernel in worst}
            worst = {kernel: ratio for kernel, ratio in worst.items() if ratio < CLOSE_CALL}
            if len(worst) == 1:
                break
        return min(worst, key=worst.__getitem__)

    def _step(self, kernel: str, rows: int) -> Callable[[], None]:
        layers = self.layers[kernel]
        inputs = [torch.randn(rows, 1, layer.in_features, dtype=self.dtype) for layer in layers]

        def run() -> None:
            for layer, x in zip(layers, inputs, strict=True):
                layer(x)

        return run


def autocast(precision: str) -> contextlib.AbstractContextManager:
    """The context a training step runs in for a Lightning precision of the CPU: nothing for
    32-true, bf16 autocast for bf16-mixed."""
    if precision == "bf16-mixed":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    if precision == "32-true":
        return contextlib.nullcontext()
    raise ValueError(f"precision must be 32-true or bf16-mixed, got {precision!r}")


def fast_linears(
    model: nn.Module, kernels: tuple[str, str, str] | None = None, fuse: bool = True
) -> tuple[str, str, str] | None:
    """Replace every nn.Linear of `model` (in place) by an InferenceLinear running `kernels`
    (for one row, for a few, for many), by default the ones that a decoding step of 1 and of
    FEW_ROWS rows runs fastest here, and the one that runs steps of each of BATCH_ROWS rows
    least slower than the fastest there. The compiled product is a candidate up
    to FEW_ROWS rows for models of COMPILED_MIN_BYTES of Linear weights or more; beyond, the
    products are computed, not read, and it lost to packing on every CPU measured. Where one
    row runs the compiled product, each block's one-row step also runs fused, its products
    inside two compiled calls (seqgen/fused.py): where that is timed faster, or always with
    `kernels` given; never with `fuse` False. Returns the three
    kernels, or None where nothing beats nn.Linear (or packing is unavailable) and the model is
    left as it was."""
    slots = linear_slots(model)
    if not packing_available(model) or not slots:
        return None
    timed = kernels is None
    if timed:
        read_bound = ["plain", "packed"]  # the candidates for one row and for a few
        weight_bytes = sum(linear.weight.nbytes for *_, linear in slots)
        if weight_bytes >= COMPILED_MIN_BYTES and compiled_available("cpu"):
            read_bound.append("compiled")
        timer = KernelTimer(model, read_bound)
        kernels = (
            timer.fastest([1], read_bound),
            timer.fastest([FEW_ROWS], read_bound),
            timer.fastest(BATCH_ROWS, ["plain", "packed"]),
        )
    if kernels == ("plain", "plain", "plain"):
        return None
    for module, name, linear in slots:
        setattr(module, name, InferenceLinear(linear, *kernels))
    if fuse and kernels[0] == "compiled":
        fuse_blocks(model, timed=timed)
    return kernels


def training_step_seconds(model: nn.Module, batch_size: int, length: int) -> dict[str, float]:
    """Seconds of a forward and backward pass of `model` over a batch of `batch_size` x
    `length` tokens (cut to about PROBE_TOKENS), in fp32 and under bf16 autocast: the faster
    of TIMED_STEPS each, taken in turns. The optimizer step is not timed (it is fp32 in both).
    The model is left as it was: no weight changes, its gradients are dropped and the random
    state (dropout) is restored."""
    rows = max(1, min(batch_size, PROBE_TOKENS // length))
    ids = torch.randint(
        model.config.vocab_size, (rows, length), generator=torch.Generator().manual_seed(0)
    )
    size = model.config.state_size
    state = torch.zeros(rows, length, size) if size else None  # its values cost nothing

    def step(precision: str) -> Callable[[], None]:
        def run() -> None:
            with autocast(precision):
                logits = model(ids, state=state)
                loss = F.cross_entropy(logits.flatten(0, 1).float(), ids.flatten())
            loss.backward()

        return run

    was_training = model.training
    with torch.random.fork_rng(devices=[]):
        model.train()
        times = seconds_in_turns({p: step(p) for p in ("32-true", "bf16-mixed")}, TIMED_STEPS)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return {name: min(seconds) for name, seconds in times.items()}
