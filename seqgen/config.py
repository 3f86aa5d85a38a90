"""Typed configs for the model and for training. Field docstrings become CLI help."""

from __future__ import annotations

import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from seqgen.errors import ConfigError


def check_types(config: Any, section: str) -> None:
    """Every field holds a value of its declared type (2.5 is not an int, "2" is not one,
    and neither is True): configs also come from hand-edited JSON and YAML."""
    hints = typing.get_type_hints(type(config))
    for f in fields(config):
        value, hint = getattr(config, f.name), hints[f.name]
        if not _matches(value, hint):
            raise ConfigError(f"{section}.{f.name} must be {_describe(hint)}, got {value!r}")


def _matches(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arm) for arm in args)
    if origin is Literal:
        return value in args
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:  # NaN and infinity pass the range checks that follow: refused here
        number = isinstance(value, int | float) and not isinstance(value, bool)
        return number and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    return True  # containers and Any: checked where they are used


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arm) for arm in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if hint is float:
        return "a finite float"
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


@dataclass
class ModelConfig:
    """Decoder-only transformer. The defaults are GPT-2 small (124M)."""

    vocab_size: int = 50257
    """Vocabulary size. `seqgen pretrain` sets it from the tokenizer."""
    block_size: int = 1024
    """Context length in tokens."""
    n_layer: int = 12
    """Number of transformer blocks."""
    n_head: int = 12
    """Attention heads per block."""
    n_embd: int = 768
    """Embedding (residual stream) width."""
    dropout: float = 0.0
    """Dropout on attention weights, residual branches and embeddings."""
    bias: bool = True
    """Biases in Linear and LayerNorm layers, as GPT-2."""
    pos_embedding: Literal["learned", "sinusoidal", "relative"] = "learned"
    """Position encoding: learned `wpe` (GPT-2), fixed sinusoids (no parameters), or relative
    (Music Transformer: a learned embedding per distance and head in every attention layer,
    no absolute positions)."""
    layer_norm_eps: float = 1e-5
    """LayerNorm epsilon."""
    activation: Literal["gelu_tanh", "gelu"] = "gelu_tanh"
    """MLP activation: GPT-2's tanh approximation of GELU, or the exact (erf) GELU, whose
    backward is cheaper: training steps 3-7% faster on CPU (measured at two model sizes)."""
    state_size: int = 0
    """Width of the token state the task computes from the ids so far (`seqgen.state`;
    music: how many notes of each pitch are sounding), embedded and added to each token's
    embedding. Set by the task; 0: none (GPT-2)."""
    state_logits: bool = False
    """Also map the token state straight onto the next-token logits (`wso`, a linear map
    that starts at zero): each token's score reads the state directly rather than through
    the residual stream. Music: the release of a pitch reads that pitch's own count and
    age. Only for a task with a token state."""

    def __post_init__(self) -> None:
        check_types(self, "model")
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.state_size < 0:
            raise ConfigError(f"model.state_size must be >= 0, got {self.state_size}")
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.pos_embedding not in ("learned", "sinusoidal", "relative"):
            raise ConfigError(
                "model.pos_embedding must be 'learned', 'sinusoidal' or 'relative', "
                f"got {self.pos_embedding!r}"
            )

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """A named preset (see `PRESETS`), with any field overridden."""
        if name not in PRESETS:
            raise ConfigError(f"unknown model preset {name!r}; choose from {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown model config key(s): {', '.join(unknown)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# GPT-2 sizes from the paper's released checkpoints; `tiny` and `small` fit a 2-core CPU.
PRESETS: dict[str, dict[str, Any]] = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),
    "tiny": dict(n_layer=2, n_head=2, n_embd=64, block_size=128, vocab_size=512),
    "small": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=2048),
}


@dataclass
class TrainConfig:
    """Optimisation and the Lightning Trainer."""

    max_steps: int = 1000
    """Optimizer steps to train for (-1: until `max_time` or `max_epochs`)."""
    max_time: str | None = None
    """Wall-clock budget, DD:HH:MM:SS or a suffix of it (02:00 = 120 s); training stops when it
    is spent, and the learning-rate schedule decays over it."""
    max_epochs: int | None = None
    """Passes over the training data; None means no limit (then max_steps or max_time decides)."""
    batch_size: int = 32
    """Sequences per micro-batch."""
    accumulate_grad_batches: int = 1
    """Micro-batches per optimizer step."""
    learning_rate: float = 1e-3
    """Peak learning rate (after warmup)."""
    min_lr_ratio: float = 0.1
    """Final learning rate of the cosine decay, as a fraction of the peak."""
    warmup_steps: int = 100
    """Linear warmup steps."""
    weight_decay: float = 0.1
    """AdamW weight decay, applied to 2-D weights only (not biases, LayerNorm, nothing 1-D)."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2."""
    label_smoothing: float = 0.0
    """Label smoothing of the training loss (0: off; 0.1 is usual for translation). Validation
    always reports the plain negative log-likelihood."""
    grad_clip: float | None = 1.0
    """Clip the gradient norm to this value (None: no clipping)."""
    max_bad_steps: int = 0
    """Steps with a NaN or infinite loss or gradient that are skipped (never applied) before
    training stops as diverged; 0 stops at the first. The last finite checkpoint is kept."""
    precision: Literal["auto", "32-true", "bf16-mixed"] = "32-true"
    """Numeric precision. bf16-mixed autocasts on CPU too: fast where the CPU multiplies bf16
    in hardware (AMX, AVX512-BF16) and the model is large enough, 36x slower than 32-true
    where it does not (AVX2, measured). auto: bf16-mixed on a GPU with bf16; on such a CPU,
    whichever of the two runs a few timed training steps of the model faster (bf16 must be
    1.1x faster; a few seconds at start-up); elsewhere 32-true."""
    val_every_n_steps: int = 250
    """Validate every N optimizer steps (and always at the end)."""
    val_batches: int | None = None
    """Validation batches per check during training, spread evenly across the validation set
    (None: all of it). The validation after training always covers the whole set, so the
    reported val_loss does not depend on it."""
    checkpoint_every_n_steps: int = 500
    """Save a resumable checkpoint every N optimizer steps (and always at the end)."""
    keep_checkpoints: int = 2
    """Resumable checkpoints kept in out_dir/checkpoints, the newest (at least 1)."""
    keep_best: bool = False
    """Also keep the checkpoint with the lowest val_loss so far as out_dir/best (a fine-tuning
    on little data overfits, and its last step is then not its lowest-loss one)."""
    log_every_n_steps: int = 10
    """Write train metrics to the logs every N steps."""
    logger: list[Literal["csv", "tensorboard", "wandb"]] = field(default_factory=lambda: ["csv"])
    """Where metrics go, one or several: csv (out_dir/logs/version_N/metrics.csv),
    tensorboard (out_dir/logs/tensorboard, one curve across resumes; needs tensorboard),
    wandb (needs wandb; WANDB_MODE=offline works without a network)."""
    accelerator: str = "auto"
    """Lightning accelerator: auto, cpu, gpu, ..."""
    devices: int | str = "auto"
    """Lightning devices: a count, a list as a string, or auto."""
    strategy: str = "auto"
    """Lightning strategy: auto, ddp, fsdp, deepspeed, ..."""
    num_nodes: int = 1
    """Machines for multi-node training."""
    num_threads: int | None = None
    """torch CPU threads (None: torch's default)."""
    num_workers: int = 0
    """DataLoader processes preparing training batches beside the model (0: in the training
    process), e.g. for music's augmentation, drawn afresh for every window."""
    compile: bool = False
    """torch.compile the model for training: faster steps on a GPU once it has compiled (a
    minute or more at start-up); needs a C++ compiler on a CPU."""
    peak_flops: float | None = None
    """One device's peak FLOP/s, for the model FLOPs utilisation (`mfu`) that training logs
    and reports (None: built in for A100, H100 and H200, dense bf16; no mfu elsewhere)."""
    progress_bar: bool = True
    """Show progress: a live bar in a terminal, plain lines (step, loss, tokens/s, elapsed,
    ETA) when the output is a file or a pipe."""
    progress_every_seconds: float = 15.0
    """Seconds between progress lines in a file or pipe (the first comes after step 1)."""

    def __post_init__(self) -> None:
        check_types(self, "train")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ConfigError(f"train.max_steps must be positive or -1, got {self.max_steps}")
        if self.max_steps == -1 and self.max_time is None and self.max_epochs is None:
            raise ConfigError("train.max_steps is -1: set train.max_time or train.max_epochs")
        for name in (
            "batch_size",
            "accumulate_grad_batches",
            "val_every_n_steps",
            "checkpoint_every_n_steps",
            "log_every_n_steps",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name} must be positive, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ConfigError(f"train.learning_rate must be positive, got {self.learning_rate}")
        if self.warmup_steps < 0:
            raise ConfigError(f"train.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(
                f"train.label_smoothing must be in [0, 1), got {self.label_smoothing}"
            )
        if self.max_time is not None and parse_duration(self.max_time) <= 0:
            raise ConfigError(f"train.max_time must be longer than 0, got {self.max_time!r}")
        if self.max_epochs is not None and self.max_epochs < 1:
            raise ConfigError(f"train.max_epochs must be >= 1 or None, got {self.max_epochs}")
        if self.val_batches is not None and self.val_batches < 1:
            raise ConfigError(
                f"train.val_batches must be >= 1 or None (all), got {self.val_batches}"
            )
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"train.grad_clip must be > 0 or None (off), got {self.grad_clip}")
        unknown = [name for name in self.logger if name not in LOGGERS]
        if unknown or len(set(self.logger)) != len(self.logger):
            raise ConfigError(
                f"train.logger must list each of {', '.join(LOGGERS)} at most "
                f"once, got {self.logger}"
            )
        if not self.progress_every_seconds > 0:
            raise ConfigError(
                f"train.progress_every_seconds must be > 0, got {self.progress_every_seconds}"
            )
        if self.peak_flops is not None and not self.peak_flops > 0:
            raise ConfigError(f"train.peak_flops must be > 0 or None, got {self.peak_flops}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ConfigError(f"train.num_threads must be >= 1 or None, got {self.num_threads}")
        if self.num_workers < 0:
            raise ConfigError(f"train.num_workers must be >= 0, got {self.num_workers}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"train.{name} must be in [0, 1), got {getattr(self, name)}")
        for name, least in (
            ("weight_decay", 0),
            ("max_bad_steps", 0),
            ("keep_checkpoints", 1),
            ("num_nodes", 1),
        ):
            if getattr(self, name) < least:
                raise ConfigError(f"train.{name} must be >= {least}, got {getattr(self, name)}")
        if self.accelerator not in ACCELERATORS:
            raise ConfigError(
                f"train.accelerator must be one of {', '.join(ACCELERATORS)}, "
                f"got {self.accelerator!r}"
            )
        if not _valid_devices(self.devices):
            raise ConfigError(
                "train.devices must be auto, a count (-1: all) or a list like "
                f"'0,1', got {self.devices!r}"
            )


ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
LOGGERS = ("csv", "tensorboard", "wandb")


def _valid_devices(devices: int | str) -> bool:
    if isinstance(devices, bool):
        return False
    if isinstance(devices, int):
        return devices >= 1 or devices == -1
    text = str(devices).strip().strip("[]")
    parts = [p.strip() for p in text.split(",") if p.strip()]
    return text == "auto" or (bool(parts) and all(p.lstrip("-").isdigit() for p in parts))


def parse_duration(text: str) -> float:
    """Seconds in a DD:HH:MM:SS (or HH:MM:SS, MM:SS, SS) duration, as Lightning's max_time."""
    parts = text.split(":")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if not values or len(values) > 4 or any(v < 0 for v in values):
        raise ConfigError(f"train.max_time must look like DD:HH:MM:SS, got {text!r}")
    seconds = 0.0
    for value, unit in zip(reversed(values), (1, 60, 3600, 86400), strict=False):
        seconds += value * unit
    return seconds
