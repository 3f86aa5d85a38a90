"""Hugging Face GPT-2 and seqgen: weights both ways, and whole checkpoints both ways
(`seqgen export --format hf`, `seqgen import --hf`).

HF's GPT-2 stores c_attn/c_proj/c_fc as Conv1D, whose weight is the transpose of nn.Linear's;
the names are otherwise ours. Reading a folder's weights needs no `transformers` install;
exporting and importing a checkpoint do (`pip install transformers`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from seqgen.checkpoint import load_weights_into
from seqgen.config import ModelConfig
from seqgen.errors import CheckpointError
from seqgen.files import read_json
from seqgen.model import GPT

CONV1D_SUFFIXES = (
    "attn.c_attn.weight",
    "attn.c_proj.weight",
    "mlp.c_fc.weight",
    "mlp.c_proj.weight",
)
SKIPPED_SUFFIXES = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers, not weights
# HF activation_function names of each of ours (the first is the one exported)
ACTIVATIONS = {"gelu_tanh": ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"), "gelu": ("gelu",)}


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """A ModelConfig from a GPT2Config (as a dict, e.g. a config.json)."""
    hf_activation = hf.get("activation_function", "gelu_new")
    activation = next((ours for ours, names in ACTIVATIONS.items() if hf_activation in names), None)
    if activation is None:
        known = ", ".join(name for names in ACTIVATIONS.values() for name in names)
        raise CheckpointError(f"activation_function {hf_activation!r} is not one of {known}")
    n_embd = hf.get("n_embd", 768)
    if hf.get("n_inner") not in (None, 4 * n_embd):
        raise CheckpointError(f"n_inner={hf['n_inner']} is not 4 x n_embd; not a GPT-2 MLP")
    return ModelConfig(
        vocab_size=hf.get("vocab_size", 50257),
        block_size=hf.get("n_positions", 1024),
        n_layer=hf.get("n_layer", 12),
        n_head=hf.get("n_head", 12),
        n_embd=n_embd,
        layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        dropout=0.0,
        bias=True,
        activation=activation,
    )


def convert_state_dict(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF GPT-2 names and layouts to ours: `transformer.` prefix, Linear (not Conv1D) weights."""
    state = {}
    for name, tensor in hf_state.items():
        if name.endswith(SKIPPED_SUFFIXES):
            continue
        if not name.startswith(("transformer.", "lm_head.")):
            name = "transformer." + name  # a bare GPT2Model's state dict
        if name.endswith(CONV1D_SUFFIXES):
            tensor = tensor.t()
        state[name] = tensor.contiguous()
    return state


def from_hf(source: Any) -> GPT:
    """A GPT with the weights of an HF `GPT2LMHeadModel`/`GPT2Model` or of a saved folder
    (`config.json` + `model.safetensors`, or `pytorch_model.bin` read with weights_only)."""
    if isinstance(source, (str, Path)):
        hf_config_dict, hf_state = _read_folder(Path(source))
        config = config_from_hf(hf_config_dict)
    else:
        config, hf_state = config_from_hf(source.config.to_dict()), source.state_dict()
    model = GPT(config)
    load_weights_into(
        model,
        convert_state_dict(hf_state),
        source if isinstance(source, (str, Path)) else type(source).__name__,
    )
    return model.eval()


def read_hf_config(folder: Path) -> dict[str, Any]:
    """An HF model folder's config.json, as a dict."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{folder}: no config.json (not a Hugging Face model folder)")
    config = read_json(config_path)
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path}: corrupt (not a JSON object)")
    if config.get("model_type", "gpt2") != "gpt2":
        raise CheckpointError(
            f"{config_path}: model_type {config['model_type']!r}; only "
            "GPT-2 models convert to seqgen"
        )
    return config


def _read_folder(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    config = read_hf_config(folder)
    if (folder / "model.safetensors").is_file():
        try:
            return config, load_file(str(folder / "model.safetensors"))
        except SafetensorError as err:
            raise CheckpointError(f"{folder / 'model.safetensors'}: corrupt ({err})") from None
    if (folder / "pytorch_model.bin").is_file():
        return config, torch.load(
            folder / "pytorch_model.bin", map_location="cpu", weights_only=True
        )
    raise CheckpointError(f"{folder}: no model.safetensors or pytorch_model.bin")


def hf_config(config: ModelConfig) -> dict[str, Any]:
    """GPT2Config keyword arguments for a GPT-2-shaped ModelConfig."""
    if not config.bias or config.pos_embedding != "learned":
        raise ValueError("only GPT-2-shaped models (biases, learned positions) export to HF")
    if config.state_size:
        raise ValueError(
            f"this model reads a token state (state_size {config.state_size}) "
            "beside its tokens, which GPT-2 cannot: it does not export to HF"
        )
    return dict(
        vocab_size=config.vocab_size,
        n_positions=config.block_size,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        layer_norm_epsilon=config.layer_norm_eps,
        activation_function=ACTIVATIONS[config.activation][0],
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )


def to_hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Our weights in HF GPT2LMHeadModel's names and Conv1D layouts (the inverse of import)."""
    state = {}
    for name, tensor in model.state_dict().items():
        if name.endswith(CONV1D_SUFFIXES):
            tensor = tensor.t()
        state[name] = tensor.contiguous()
    return state
