"""What this CPU computes fastest, decided by timing the model at hand, not by CPU flags alone.

Decoding multiplies every weight matrix by one vector per token. On some CPUs PyTorch's
default fp32 matrix-vector product reads weights at about a third of the memory bandwidth and
oneDNN's packed layout about twice as fast; on others (an Intel Xeon with AMX) the default is
faster for one row and slower for several (see benchmarks/generate.py). So `pack_linears`
times the model's own shapes at 1 and at 8 rows and packs where that pays, keeping the plain
weight for single rows where only batches gain. Packing is for inference only: a packed
model has no trainable Linear weights and an untied lm_head.

Training under bf16 autocast is 2x faster than fp32 for a 10M-parameter model on a CPU with
AMX, yet slower for a 1M one on some CPUs with AVX512-BF16, and 36x slower without bf16
hardware; `training_step_seconds` times both on the model's own batch shape.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

TIMED_CALLS = 15  # per layout, after one warm-up call
BATCH_ROWS = 8  # the rows of a batched decoding step that packing is timed at
TIMED_STEPS = 2  # training steps timed per precision, after one warm-up step each
PROBE_TOKENS = 4096  # at most this many tokens per timed training step (the batch is cut)


class PackedLinear(nn.Module):
    """An nn.Linear for inference, its weight in oneDNN's packed layout; with `plain_rows`,
    inputs of at most that many rows use the plain weight (kept as well) instead."""

    def __init__(self, linear: nn.Linear, plain_rows: int = 0) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 1)
        self.bias = None if linear.bias is None else linear.bias.detach()
        self.plain_rows = plain_rows
        self.weight = linear.weight.detach() if plain_rows else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is not None and x.numel() <= self.plain_rows * self.in_features:
            return nn.functional.linear(x, self.weight, self.bias)
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


class PackingTimer:
    """Times a decoding step's products (the first block's Linears and the head) on this
    machine, plain and packed; the sample is packed once for every `pays` asked."""

    def __init__(self, model: nn.Module) -> None:
        self.plain = step_sample([linear for *_, linear in linear_slots(model)])
        self.packed = [PackedLinear(layer) for layer in self.plain]

    def pays(self, rows: int = 1) -> bool:
        """Whether a step of `rows` rows runs faster with packed weights than plain."""
        inputs = [
            torch.randn(rows, 1, layer.in_features, dtype=layer.weight.dtype)
            for layer in self.plain
        ]

        def step(layers: list[nn.Module]) -> Callable[[], None]:
            def run() -> None:
                for layer, x in zip(layers, inputs, strict=True):
                    layer(x)

            return run

        with torch.inference_mode():
            times = seconds_in_turns(
                {"packed": step(self.packed), "plain": step(self.plain)}, TIMED_CALLS
            )
        return statistics.median(times["packed"]) < statistics.median(times["plain"])


def seconds_in_turns(
    calls: dict[str, Callable[[], object]], times: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds of each of `times` calls of every entry, after `warmup` calls of each, taken in
    turns (one call of every entry, then the next round) so that a busy moment of the machine
    slows all alike."""
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for turn in range(warmup + times):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            if turn >= warmup:
                seconds[name].append(time.perf_counter() - started)
    return seconds


def autocast(precision: str) -> contextlib.AbstractContextManager:
    """The context a training step runs in for a Lightning precision of the CPU: nothing for
    32-true, bf16 autocast for bf16-mixed."""
    if precision == "bf16-mixed":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    if precision == "32-true":
        return contextlib.nullcontext()
    raise ValueError(f"precision must be 32-true or bf16-mixed, got {precision!r}")


def pack_linears(model: nn.Module, measure: bool = True) -> bool:
    """Replace every nn.Linear of `model` (in place) by a PackedLinear where that is
    available and, with `measure`, faster on this machine for batched steps (single rows
    keep the plain weight where packing slows them); returns whether it did."""
    if not packing_available(model):
        return False
    timer = PackingTimer(model) if measure else None
    if timer is not None and not timer.pays(BATCH_ROWS):
        return False
    plain_rows = 1 if timer is not None and not timer.pays(1) else 0
    for module, name, linear in linear_slots(model):
        setattr(module, name, PackedLinear(linear, plain_rows))
    return True


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
