"""Self-contained checkpoints: one directory that holds everything needed to use or resume.

    model.safetensors      weights, GPT-2 names (a tied lm_head is stored once, as wte)
    config.json            format version, task, model config, training step and options
    seqgen_tokenizer.json  tokenizer kind and special tokens (+ its files, e.g. tokenizer.model)
    training_state.pt      optimizer, scheduler and loop state for resuming (tensors and plain
                           Python values only, read with torch.load(weights_only=True))

Loading never unpickles arbitrary objects.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from seqgen.config import ModelConfig
from seqgen.errors import CheckpointError, ConfigError
from seqgen.files import atomic_directory, complete_swaps, read_json
from seqgen.model import GPT
from seqgen.tokenizer import Tokenizer, load_tokenizer

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "training_state.pt"
META_KEY = "seqgen"  # where the LightningModule puts config.json's content in Lightning's dict
MODULE_PREFIX = "model."  # the LightningModule holds the GPT as `self.model`


@dataclass
class Checkpoint:
    model: GPT
    tokenizer: Tokenizer
    meta: dict[str, Any]
    path: Path

    @property
    def task(self) -> str:
        return self.meta["task"]


def save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    """Save a state dict; tensors sharing storage with an earlier one (tied weights) are dropped."""
    seen: set[tuple[int, int]] = set()
    unique = {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key not in seen:
            seen.add(key)
            unique[name] = tensor.detach().contiguous().cpu()
    save_file(unique, str(path), metadata={"format": "pt"})


def write_checkpoint(
    directory: str | Path,
    weights: dict[str, torch.Tensor],
    tokenizer: Tokenizer,
    meta: dict[str, Any],
    training_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory atomically: a crash leaves the previous one intact."""
    directory = Path(directory)
    if "task" not in meta or "model" not in meta:
        raise ValueError("checkpoint metadata needs 'task' and 'model'")
    bad = non_finite(weights)
    if bad:
        raise CheckpointError(
            f"refusing to write {directory}: {bad} hold NaN or infinite "
            "values (a diverged model is never saved)"
        )
    with atomic_directory(directory) as partial:
        save_weights(weights, partial / WEIGHTS_FILE)
        tokenizer.save(partial)
        (partial / CONFIG_FILE).write_text(
            json.dumps({"format_version": FORMAT_VERSION, **meta}, indent=2) + "\n"
        )
        if training_state is not None:
            torch.save(training_state, partial / STATE_FILE)
    return directory


def save_model(
    directory: str | Path, model: GPT, tokenizer: Tokenizer, task: str, **meta: Any
) -> Path:
    """Save a model for inference or fine-tuning (no training state)."""
    return write_checkpoint(
        directory,
        model.state_dict(),
        tokenizer,
        {"task": task, "model": model.config.to_dict(), **meta},
    )


def read_meta(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: not a seqgen checkpoint (no {CONFIG_FILE})")
    meta = read_json(path)
    if not isinstance(meta, dict) or not {"task", "model", "format_version"} <= set(meta):
        raise CheckpointError(f"{path}: corrupt (needs format_version, task and model)")
    for key, kind, text in META_FIELDS:
        if key in meta and not (isinstance(meta[key], kind) and not isinstance(meta[key], bool)):
            raise CheckpointError(f"{path}: {key!r} must be {text}, got {meta[key]!r}")
    if meta["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format version {meta['format_version']} is newer than this seqgen reads "
            f"({FORMAT_VERSION}); upgrade seqgen"
        )
    if not meta["task"] or meta.get("step", 0) < 0:
        raise CheckpointError(f"{path}: 'task' must name a task and 'step' be >= 0")
    try:
        ModelConfig.from_dict(meta["model"])
    except ConfigError as err:
        raise CheckpointError(f"{path}: {err}") from None
    return meta


# config.json's own fields (a hand-edited file is checked before anything uses it)
META_FIELDS = (
    ("format_version", int, "an integer"),
    ("task", str, "a task name"),
    ("model", dict, "an object of model settings"),
    ("step", int, "an integer"),
    ("train_tokens", int, "an integer"),
    ("task_options", dict, "an object"),
    ("generation", dict, "an object of generation options"),
    ("init_from", str, "a path"),
)


def non_finite(weights: dict[str, torch.Tensor]) -> str | None:
    """The names of the tensors holding NaN or infinite values, if any (None if none)."""
    bad = [
        name
        for name, tensor in weights.items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if not bad:
        return None
    return bad[0] + (f" and {len(bad) - 1} more tensors" if len(bad) > 1 else "")


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    path = directory / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {WEIGHTS_FILE}")
    try:
        weights = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: corrupt weights ({err})") from None
    bad = non_finite(weights)
    if bad:
        raise CheckpointError(
            f"{path}: {bad} hold NaN or infinite values (saved from a "
            "diverged run?); this checkpoint cannot be used"
        )
    return weights


def load_weights_into(model: GPT, weights: dict[str, torch.Tensor], source: Path | str) -> None:
    """Strict load, except that a tied lm_head may be absent (it is the wte tensor)."""
    try:
        result = model.load_state_dict(weights, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise CheckpointError(f"{source}: weights do not fit the model config ({err})") from None
    missing = set(result.missing_keys) - {"lm_head.weight"}
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"{source}: weights do not match the model config "
            f"(missing: {sorted(missing)[:5]}, unexpected: {sorted(result.unexpected_keys)[:5]})"
        )


def check_weights_fit(config: ModelConfig, directory: Path) -> None:
    """The weights file holds exactly the tensors `config` makes, with their shapes: checked
    from the file's header and a model on the meta device (no memory) before the model is
    built, so a config.json that declares a huge vocabulary or depth fails here, naming the
    first tensor that differs, instead of exhausting memory."""
    path = directory / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {WEIGHTS_FILE}")
    try:
        with safe_open(str(path), "pt") as weights:
            stored = {name: tuple(weights.get_slice(name).get_shape()) for name in weights.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: corrupt weights ({err})") from None
    layers = 1 + max(
        (
            int(name.split(".")[2])
            for name in stored
            if name.startswith("transformer.h.") and name.split(".")[2].isdigit()
        ),
        default=-1,
    )
    if layers != config.n_layer:  # before the meta model: a million layers take long to make
        raise CheckpointError(
            f"{directory}: the weights do not fit the model config of "
            f"{CONFIG_FILE} (n_layer {config.n_layer} by the config, {layers} "
            f"blocks in {WEIGHTS_FILE})"
        )
    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in GPT(config).state_dict().items()}
    if "lm_head.weight" not in stored:  # tied: stored once, as wte
        expected.pop("lm_head.weight", None)
    for name in sorted(set(expected) | set(stored)):
        if expected.get(name) != stored.get(name):
            raise CheckpointError(
                f"{directory}: the weights do not fit the model config of {CONFIG_FILE} "
                f"({name}: {expected.get(name, 'absent')} by the config, "
                f"{stored.get(name, 'absent')} in {WEIGHTS_FILE})"
            )


def resolve(path: str | Path) -> Path:
    """A checkpoint directory, given it, a run directory (its `final`) or a run's checkpoints."""
    path = Path(path).expanduser()
    if (path / CONFIG_FILE).is_file():
        return path
    if (path / "final" / CONFIG_FILE).is_file():
        return path / "final"
    latest = latest_checkpoint(path / "checkpoints") or latest_checkpoint(path)
    if latest is not None:
        return latest
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    raise CheckpointError(f"{path}: not a seqgen checkpoint or run directory (no {CONFIG_FILE})")


def prune_checkpoints(directory: Path, keep: int) -> None:
    """Keep the `keep` newest checkpoints in `directory`, and no torn `.partial` or `.old`
    copies: a run resumed after a crash prunes what the crashed process left (a swap cut
    between its two renames is finished first, so the newest checkpoint is never lost)."""
    if not directory.is_dir():
        return
    complete_swaps(directory)
    for torn in [*directory.glob("*.partial"), *directory.glob("*.old")]:
        shutil.rmtree(torn, ignore_errors=True)
    found = sorted(
        (read_meta(c).get("step", -1), c.name, c)
        for c in directory.iterdir()
        if (c / CONFIG_FILE).is_file()
    )
    for _, _, old in found[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(directory: Path) -> Path | None:
    """The checkpoint with the highest training step in `directory`, if any."""
    if not directory.is_dir():
        return None
    complete_swaps(directory)
    found = []
    for candidate in directory.iterdir():
        if (candidate / CONFIG_FILE).is_file() and not candidate.name.endswith(
            (".partial", ".old")
        ):
            found.append((read_meta(candidate).get("step", -1), candidate.name, candidate))
    return max(found)[2] if found else None


def load(path: str | Path, task: str | None = None, map_location: str = "cpu") -> Checkpoint:
    """Load a checkpoint's model (eval mode) and tokenizer; `task` checks what it was made for."""
    directory = resolve(path)
    meta = read_meta(directory)
    if task is not None and meta["task"] != task:
        raise CheckpointError(
            f"{directory} was trained for task {meta['task']!r}, not {task!r}; "
            f"pass --task {meta['task']} or another checkpoint"
        )
    try:
        config = ModelConfig.from_dict(meta["model"])
    except (ConfigError, TypeError) as err:
        raise CheckpointError(f"{directory / CONFIG_FILE}: invalid model config ({err})") from None
    check_weights_fit(config, directory)
    model = GPT(config)
    load_weights_into(model, read_weights(directory), directory / WEIGHTS_FILE)
    model.to(map_location).eval()
    return Checkpoint(model, load_tokenizer(directory), meta, directory)


def jsonable(cfg: Any) -> dict[str, Any]:
    """A config dataclass as plain JSON values (stored in checkpoints)."""
    return json.loads(json.dumps(asdict(cfg), default=str))
