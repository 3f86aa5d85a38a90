"""Model FLOPs utilisation: the FLOPs a training step's model arithmetic needs, per second,
over the device's peak (PaLM's definition, as nanoGPT and litgpt report it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from seqgen.model import GPT

# Dense bf16 tensor-core peaks in FLOP/s, by a part of the device's name (first match wins).
PEAK_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM and NVL
    ("H200", 989e12),
    ("A100", 312e12),
)


def training_flops_per_token(model: GPT, sequence_length: int) -> float:
    """Forward and backward FLOPs per token: 6 per weight, plus attention's 12 x layers x
    width x sequence length (position embeddings are looked up, not multiplied)."""
    config = model.config
    weights = model.num_params()
    if "wpe" in model.transformer:
        weights -= model.transformer.wpe.weight.numel()
    return 6 * weights + 12 * config.n_layer * config.n_embd * sequence_length


def peak_flops(device: torch.device, override: float | None = None) -> float | None:
    """The peak FLOP/s of one `device`: `override` if given, else the built-in peak of a
    known GPU; None where none is known (a CPU, another GPU)."""
    import torch

    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for part, peak in PEAK_FLOPS if part in name), None)
