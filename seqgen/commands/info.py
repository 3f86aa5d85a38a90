"""`seqgen info`: what a checkpoint (or a model preset) is, and its parameters by component,
as the GPT-2 illustrations count them."""

from __future__ import annotations

from dataclasses import dataclass

from seqgen import checkpoint
from seqgen.config import PRESETS, ModelConfig
from seqgen.errors import SeqgenError
from seqgen.model import GPT
from seqgen.tables import key_value_table
from seqgen.tokenizer import load_tokenizer


@dataclass(kw_only=True)
class InfoConfig:
    """Parameter tally of a checkpoint or a model preset, by component."""

    ckpt: str | None = None
    """Checkpoint or run directory."""
    model: str | None = None
    """Model preset (e.g. gpt2, gpt2-medium, small)."""

    def __post_init__(self) -> None:
        if (self.ckpt is None) == (self.model is None):
            raise ValueError("give ckpt or model, not both")


def run(args: InfoConfig) -> None:
    """Print what a checkpoint (or a preset) is, and its parameters by component."""
    if args.ckpt:
        path = checkpoint.resolve(args.ckpt)
        meta = checkpoint.read_meta(path)
        config = ModelConfig.from_dict(meta["model"])
        tokenizer = load_tokenizer(path)
        _print_table(
            str(path),
            {
                "task": meta["task"],
                "task options": meta.get("task_options", {}),
                "step": meta.get("step", "unknown"),
                "tokens trained": meta.get("train_tokens", "unknown"),
                "started from": meta.get("init_from", "unknown"),
                "tokenizer": f"{tokenizer.kind}, {tokenizer.vocab_size:,} tokens",
                "format version": meta["format_version"],
            },
        )
    elif args.model in PRESETS:
        config = ModelConfig.from_preset(args.model)
    else:
        raise SeqgenError(
            f"unknown model preset {args.model!r}; presets: {', '.join(sorted(PRESETS))}"
        )
    _print_table("model", config.to_dict())
    rows = parameter_tally(GPT(config))
    width = max(len(name) for name, _ in rows)
    print("\nparameters")
    for name, count in rows:
        print(f"  {name:<{width}}  {count:>14,}")


def parameter_tally(model) -> list[tuple[str, int]]:
    """Parameters by component, as the GPT-2 illustrations count them (tied head once)."""
    t = model.transformer
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    rows = [("token embedding (wte, tied lm_head)", count(t.wte))]
    if "wpe" in t:
        rows.append(("position embedding (wpe)", count(t.wpe)))
    for i, block in enumerate(t.h):
        rows.append((f"block {i} attention (c_attn, c_proj)", count(block.attn)))
        rows.append((f"block {i} MLP (c_fc, c_proj)", count(block.mlp)))
        rows.append((f"block {i} LayerNorms (ln_1, ln_2)", count(block.ln_1) + count(block.ln_2)))
    rows.append(("final LayerNorm (ln_f)", count(t.ln_f)))
    if "wse" in t:
        rows.append(("token state embedding (wse)", count(t.wse)))
    if model.config.state_logits:
        rows.append(("token state to logits (wso)", count(model.wso)))
    rows.append(("total", model.num_params()))
    return rows


def _print_table(title: str, values: dict) -> None:
    print("\n" + key_value_table(title, values))
