"""`seqgen export --format hf` and `seqgen import --hf`: a seqgen checkpoint as a Hugging Face
model folder and back.

An export holds what `transformers` reads: `config.json` (GPT2Config with the model's real
bos/eos/pad ids and vocabulary size, plus seqgen's own metadata under `seqgen`),
`model.safetensors`, `generation_config.json` and the tokenizer files that
`AutoTokenizer.from_pretrained` loads offline. It also keeps seqgen's own tokenizer files
(`seqgen_tokenizer.json`, ...), so that importing it back gives the same checkpoint.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from seqgen import checkpoint
from seqgen.errors import CheckpointError, SeqgenError
from seqgen.files import atomic_directory
from seqgen.inference import checkpoint_task
from seqgen.interop.hf import from_hf, hf_config, read_hf_config, to_hf_state_dict
from seqgen.tokenizer import META_FILE, Tokenizer, load_tokenizer

log = logging.getLogger(__name__)
SEQGEN_KEY = "seqgen"  # seqgen's checkpoint metadata inside an export's config.json
PROBE = "probe text"  # an input whose prompt shows the task's ids around the text


@dataclass(kw_only=True)
class ExportConfig:
    """Write a checkpoint as a Hugging Face model folder (GPT2LMHeadModel and its tokenizer)."""

    ckpt: str
    """Checkpoint or run directory."""
    out: str
    """Folder to write."""
    format: Literal["hf"] = "hf"
    """Export format: `hf`, the folder that transformers' from_pretrained reads."""
    overwrite: bool = False
    """Replace `out` if it exists."""


@dataclass(kw_only=True)
class ImportConfig:
    """Turn a Hugging Face GPT-2 model folder into a seqgen checkpoint."""

    hf: str
    """Hugging Face model folder (config.json, model.safetensors or pytorch_model.bin, and
    tokenizer.json unless it is a seqgen export)."""
    out: str
    """Checkpoint directory to write."""
    task: str | None = None
    """Task of the checkpoint (default: a seqgen export's own, else text)."""
    overwrite: bool = False
    """Replace `out` if it exists."""


def require_transformers():
    try:
        import transformers
    except ImportError:
        raise SeqgenError(
            "exporting to and importing from Hugging Face needs transformers: "
            "pip install transformers"
        ) from None
    return transformers


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise SeqgenError(f"{out} exists; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise SeqgenError(f"{out} is a file, not a folder")


def prompt_template(meta: dict[str, Any], tokenizer: Tokenizer) -> tuple[list[int], list[int]]:
    """The ids the task puts before and after a text input (e.g. text: eos; translation:
    bos, language tag ... delimiter), so that the HF tokenizer builds the same prompt; empty
    when the task's prompt is not text between fixed ids."""
    try:
        ids = checkpoint_task(meta).prompt(PROBE, tokenizer)
    except Exception:  # a task whose prompt is not text (music takes a MIDI file)
        return [], []
    text = tokenizer.encode(PROBE)
    for start in range(len(ids) - len(text) + 1):
        if ids[start : start + len(text)] == text:
            return ids[:start], ids[start + len(text) :]
    return [], []


def export_hf(config: ExportConfig) -> list[str]:
    """Write the export; returns the names of the files written."""
    transformers = require_transformers()
    out = Path(config.out)
    _check_out(out, config.overwrite)
    loaded = checkpoint.load(config.ckpt)
    model, tokenizer, meta = loaded.model, loaded.tokenizer, loaded.meta
    try:
        shape = hf_config(model.config)
    except ValueError as err:
        raise SeqgenError(
            f"{loaded.path}: {err} (this model has pos_embedding "
            f"{model.config.pos_embedding!r}, bias {model.config.bias})"
        ) from None
    ids = {
        "bos_token_id": tokenizer.bos_id,
        "eos_token_id": tokenizer.eos_id,
        "pad_token_id": tokenizer.pad_id,
    }
    saved = {k: meta[k] for k in ("task", "task_options", "step", "train_tokens") if k in meta}
    hf_model = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(**shape, **ids, **{SEQGEN_KEY: {**saved, "model": meta["model"]}})
    )
    result = hf_model.load_state_dict(to_hf_state_dict(model), strict=False)
    missing = [k for k in result.missing_keys if not k.endswith(".attn.bias")]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"{loaded.path}: weights do not map onto GPT2LMHeadModel (missing "
            f"{missing[:3]}, unexpected {result.unexpected_keys[:3]})"
        )
    hf_model.generation_config = transformers.GenerationConfig(**ids)
    with atomic_directory(out) as folder:
        tokenizer.save(folder)  # seqgen's own files, for import
        hf_model.save_pretrained(folder)
        hf_tokenizer = tokenizer.to_hf() if hasattr(tokenizer, "to_hf") else None
        if hf_tokenizer is None:
            log.warning(
                "the %s tokenizer has no Hugging Face form: the export holds the "
                "model and seqgen's tokenizer only",
                tokenizer.kind,
            )
        else:
            _wrap(
                transformers, hf_tokenizer, tokenizer, meta, model.config.block_size
            ).save_pretrained(folder)
            _portable_tokenizer_class(folder / "tokenizer_config.json")
    return sorted(p.name for p in out.iterdir())


def _wrap(transformers, hf_tokenizer, tokenizer: Tokenizer, meta: dict[str, Any], block_size: int):
    """A PreTrainedTokenizerFast whose default special tokens build the task's prompt."""
    from tokenizers.processors import TemplateProcessing

    name = hf_tokenizer.id_to_token
    before, after = prompt_template(meta, tokenizer)
    if before or after:
        hf_tokenizer.post_processor = TemplateProcessing(
            single=[*map(name, before), "$A", *map(name, after)],
            special_tokens=[(name(i), i) for i in dict.fromkeys(before + after)],
        )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=hf_tokenizer,
        bos_token=name(tokenizer.bos_id),
        eos_token=name(tokenizer.eos_id),
        pad_token=name(tokenizer.pad_id),
        model_max_length=block_size,
        clean_up_tokenization_spaces=False,
    )


def _portable_tokenizer_class(path: Path) -> None:
    """transformers 5 names its fast tokenizer class TokenizersBackend, which 4.x does not
    know; both load PreTrainedTokenizerFast, its former name."""
    settings = json.loads(path.read_text())
    if settings.get("tokenizer_class") == "TokenizersBackend":
        settings["tokenizer_class"] = "PreTrainedTokenizerFast"
        path.write_text(json.dumps(settings, indent=2) + "\n")


def import_hf(config: ImportConfig) -> Path:
    """Write the checkpoint; returns its path."""
    from seqgen.registry import task_class

    folder, out = Path(config.hf), Path(config.out)
    _check_out(out, config.overwrite)
    hf = read_hf_config(folder)
    model = from_hf(folder)
    saved = hf.get(SEQGEN_KEY) if isinstance(hf.get(SEQGEN_KEY), dict) else {}
    if (folder / META_FILE).is_file():
        tokenizer = load_tokenizer(folder)
    else:
        require_transformers()  # the `tokenizers` package comes with it
        from seqgen.interop.hf_tokenizer import HuggingFaceTokenizer

        tokenizer = HuggingFaceTokenizer.from_hf_folder(folder, hf)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise CheckpointError(
            f"{folder}: the tokenizer has {tokenizer.vocab_size} tokens, the "
            f"model's embedding {model.config.vocab_size}"
        )
    task = config.task or saved.get("task", "text")
    task_class(task)  # an unknown task is an error before anything is written
    model_config = model.config
    if saved.get("model"):
        model_config = _saved_model_config(saved["model"], model.config, folder)
    meta = {
        "task": task,
        "model": model_config.to_dict(),
        "init_from": str(folder),
        **{k: saved[k] for k in ("step", "train_tokens") if isinstance(saved.get(k), int)},
    }
    if task == saved.get("task") and isinstance(saved.get("task_options"), dict):
        meta["task_options"] = saved["task_options"]
    return checkpoint.write_checkpoint(out, model.state_dict(), tokenizer, meta)


def _saved_model_config(values: dict[str, Any], shape, folder: Path):
    """The seqgen model config stored in an export (dropout and all), if it still describes
    the weights' shape (config.json may have been edited since)."""
    from seqgen.config import ModelConfig

    try:
        saved = ModelConfig.from_dict(values)
    except Exception as err:
        raise CheckpointError(f"{folder / 'config.json'}: {SEQGEN_KEY}.model: {err}") from None
    fields = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")
    if any(getattr(saved, f) != getattr(shape, f) for f in fields):
        log.warning(
            "%s: the stored seqgen model config disagrees with the HF config; using the HF config",
            folder / "config.json",
        )
        return shape
    return saved
