"""How a command runs a model: `--device auto|cpu|cuda|cuda:N|mps`, `--precision` and
`--quantize`, the same for `generate`, `evaluate`, `serve`, `attention` and `seqgen.load`.

No `from __future__ import annotations` here: the options' types must be objects, not
strings, for the parsers of the commands' configs in other modules that inherit them."""

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from seqgen.errors import ConfigError

if TYPE_CHECKING:  # --help must not load torch
    import torch

DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
Precision = Literal["auto", "32", "bf16"]
Quantize = Literal["none", "int8"]


@dataclass(kw_only=True)
class DeviceOptions:
    """The device and the precision a command runs its model in."""

    device: str = "auto"
    """auto (the GPU where there is one, else the CPU), cpu, cuda, cuda:N or mps."""
    precision: Precision = "auto"
    """Precision of the weights: auto is bf16 on a GPU that has it and 32 elsewhere; bf16 is
    also faster on a CPU that multiplies bf16 in hardware (AMX, AVX512-BF16). On a CPU whose
    float32 attention is the faster, a bf16 model decodes over float32 keys and values (twice
    the cache's memory; docs/generation.md)."""
    quantize: Quantize = "none"
    """int8: the Linear weights as int8, one scale per output channel (the activations stay
    in `precision`): a quarter of fp32's bytes to read per token. Faster for a large model
    decoding one row at a time (GPT-2 124M: 1.6x on an Intel Xeon); slower for batches and
    small models (docs/generation.md)."""

    def __post_init__(self) -> None:
        check_device_name(self.device)

    def load_options(self) -> dict[str, str]:
        """The keyword arguments of `seqgen.load` that these options set."""
        return {"device": self.device, "precision": self.precision, "quantize": self.quantize}


def check_device_name(name: str) -> None:
    if not DEVICE_PATTERN.fullmatch(name):
        raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps, got {name!r}")


def resolve_device(name: str = "auto") -> "torch.device":
    """The torch device `name` means here; a ConfigError in one line if it is absent."""
    import torch

    check_device_name(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available() else "cpu")
    if name.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(name.partition(":")[2] or 0)
        if index >= count:
            found = f"{count} CUDA device{'s' if count != 1 else ''}" if count else "no CUDA device"
            built = "" if torch.version.cuda else " (this torch is a CPU build)"
            raise ConfigError(
                f"device {name}: this machine has {found}{built}; use --device auto or cpu"
            )
    if name == "mps" and not _mps_available():
        raise ConfigError(
            "device mps: Apple's Metal is not available here; use --device auto or cpu"
        )
    return torch.device(name)


def inference_precision(precision: str, device: "torch.device") -> Literal["32", "bf16"]:
    """ "32" or "bf16" for `precision` on `device`: auto is bf16 on a GPU with bf16."""
    import torch

    if precision != "auto":
        return precision  # type: ignore[return-value]
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "32"


def _mps_available() -> bool:
    import torch

    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
