"""The decoder-only transformer. Configured as GPT-2 it is GPT-2, parameter name for name.

Shapes: B batch, T time (tokens), C channels (n_embd), nh heads, hs head size (C // nh),
V vocabulary size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from seqgen.config import ModelConfig
from seqgen.generation.cache import KVCache, causal_mask
from seqgen.relative import RelativeAttention, relative_logits


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        # q, k and v projections fused in one matmul, as GPT-2's c_attn
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C). mask: (B, 1, T, S), True where a query may attend, or
        None for causal attention; cache: the keys and values of the S - T positions before,
        which these T join."""
        B, T, C = x.shape
        q, k, v = self.heads(x)  # 3 x (B, nh, T, hs)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, nh, S, hs), in the cache's dtype
        y = self.attend(q.to(k.dtype), k, v, mask, cache, layer)  # (B, nh, T, hs)
        return self.resid_dropout(self.c_proj(y.to(x.dtype).transpose(1, 2).reshape(B, T, C)))

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values of x (B, T, C), each (B, nh, T, hs)."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        return tuple(t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))

    def attend(self, q, k, v, mask, cache, layer) -> torch.Tensor:
        """softmax(q k^T / sqrt(hs)) v; a cache's shared prefix (the prompt of several rows)
        is read once for all its rows."""
        if cache is not None and cache.prefix is not None:
            return cache.prefix.attend(q, k, v, layer, mask)
        return F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=mask is None and q.size(2) > 1 and k.size(2) == q.size(2),
            dropout_p=self.dropout if self.training else 0.0,
        )

    def bias(self, q: torch.Tensor, S: int) -> torch.Tensor | None:
        """What the attention logits (B, nh, T, S) add to q k^T: nothing here."""
        return None

    def weights(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The attention weights (B, nh, T, T) over x alone (no cache): what attention maps
        show, computed apart (the forward pass never forms them)."""
        q, k, _ = self.heads(x)
        T = q.size(2)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))
        bias = self.bias(q, T)
        if bias is not None:
            scores = scores + bias
        allowed = mask if mask is not None else causal_mask(T, T, x.device)
        return torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)


class RelativeSelfAttention(CausalSelfAttention):
    """Music Transformer's relative attention: logits q_i . E(i - j) beside q_i . k_j, one
    learned embedding E per distance and head (`rel`; the computation: seqgen/relative.py)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        # row block_size - 1 - d embeds distance d, per head
        head_size = config.n_embd // config.n_head
        self.rel = nn.Parameter(0.02 * torch.randn(config.n_head, config.block_size, head_size))

    def attend(self, q, k, v, mask, cache, layer) -> torch.Tensor:
        T, S = q.size(2), k.size(2)
        if cache is None and mask is None and q.is_cpu and not (self.training and self.dropout):
            # training's case, blockwise: 4x faster than the mask below
            e = self.rel[:, self.rel.size(1) - T :]
            return RelativeAttention.apply(q, k, v, e, causal_mask(T, T, q.device))
        allowed = mask if mask is not None else causal_mask(T, S, q.device)
        bias = self.bias(q, S).masked_fill(~allowed, float("-inf"))
        dropout = self.dropout if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)

    def bias(self, q: torch.Tensor, S: int) -> torch.Tensor:
        """The relative logits, scaled as q k^T is: (B, nh, T, S)."""
        return (relative_logits(q, self.rel, S) / math.sqrt(q.size(-1))).to(q.dtype)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        # GPT-2's "gelu_new" is the tanh approximation
        self.gelu = nn.GELU(approximate="tanh" if config.activation == "gelu_tanh" else "none")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        relative = config.pos_embedding == "relative"
        self.attn = (RelativeSelfAttention if relative else CausalSelfAttention)(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.mlp = MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask, cache, layer)
        return x + self.mlp(self.ln_2(x))


def sinusoidal_positions(block_size: int, n_embd: int) -> torch.Tensor:
    """Fixed sin/cos position table of "Attention Is All You Need", (block_size, n_embd)."""
    position = torch.arange(block_size, dtype=torch.float32).unsqueeze(1)
    frequency = torch.exp(
        torch.arange(0, n_embd, 2, dtype=torch.float32) * -(math.log(1e4) / n_embd)
    )
    table = torch.zeros(block_size, n_embd)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)[:, : n_embd // 2]
    return table


class GPT(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
                ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias),
            )
        )
        if config.state_size:  # the task's token state (seqgen/state.py), embedded
            self.transformer["wse"] = nn.Linear(config.state_size, config.n_embd, bias=False)
        if config.state_logits:  # and read by the output directly
            if not config.state_size:
                raise ValueError("state_logits needs a token state (state_size > 0)")
            self.wso = nn.Linear(config.state_size, config.vocab_size, bias=False)
        if config.pos_embedding == "learned":
            self.transformer["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        elif config.pos_embedding == "sinusoidal":
            # not persistent: derived from the config, so never stored in a checkpoint
            self.register_buffer(
                "sinusoids",
                sinusoidal_positions(config.block_size, config.n_embd),
                persistent=False,
            )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied, as GPT-2
        self.apply(self._init_weights)
        if config.state_logits:  # a model that starts as it would without it
            nn.init.zeros_(self.wso.weight)
        # GPT-2: residual projections scaled by 1/sqrt(number of residual additions)
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        """Parameter count, the tied head counted once (parameters() already deduplicates)."""
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        idx: torch.Tensor,
        input_pos: torch.Tensor | None = None,
        cache: KVCache | None = None,
        padding_mask: torch.Tensor | None = None,
        last_only: bool = False,
        state: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Next-token logits (B, T, V) for token ids idx (B, T).

        Args:
            input_pos: (B, T) or (T,) positions of the tokens; default: after the cache's.
            cache: keys/values of earlier positions; the new ones are appended to it.
            padding_mask: (B, S) over all S = cache.length + T positions, False at padding
                (left-padded batches), which no token attends to.
            last_only: return logits for the last position only, (B, 1, V).
            state: (B, T, state_size) the token state after each token, for a model with
                `config.state_size` (and only then).
        """
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        offset = cache.offset if cache is not None else 0  # a shared prefix's positions
        block = self.config.block_size
        # with explicit positions, rows of a batch may hold more slots than any one reads
        # (a shared prefix and rows admitted at different times); only positions must fit
        relative = self.config.pos_embedding == "relative"
        if offset + start + T > block and (input_pos is None or relative):
            raise ValueError(f"sequence length {offset + start + T} exceeds block_size {block}")
        if input_pos is None:
            input_pos = torch.arange(offset + start, offset + start + T, device=idx.device)
        elif int(input_pos.max()) >= block:
            raise ValueError(f"position {int(input_pos.max())} exceeds block_size {block}")
        x = self.transformer.wte(idx)  # (B, T, C)
        if self._checked_state(state, B, T):
            state = state.to(x.dtype)  # a task's counts may come as integers
            x = x + self.transformer.wse(state)
        if "wpe" in self.transformer:
            x = x + self.transformer.wpe(input_pos)  # positions (T,) or (B, T) broadcast
        elif hasattr(self, "sinusoids"):
            x = x + self.sinusoids[input_pos].to(x.dtype)
        # relative positions live in the attention layers
        x = self.transformer.drop(x)
        mask = None
        if padding_mask is not None:
            # causal and not padding; a padding query may see itself, so no row is all False
            mask = causal_mask(T, start + T, idx.device) & padding_mask[:, None, None, :]
            mask |= F.pad(torch.eye(T, dtype=torch.bool, device=idx.device), (start, 0))
        elif start > 0 and T > 1:
            mask = causal_mask(T, start + T, idx.device)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, mask, cache, layer)
        if cache is not None:
            cache.length = start + T
        x = self.transformer.ln_f(x[:, -1:] if last_only else x)
        logits = self.lm_head(x)  # (B, T, V), or (B, 1, V) with last_only
        if self.config.state_logits:
            logits = logits + self.wso(state[:, -1:] if last_only else state).to(logits.dtype)
        return logits

    def attention_maps(
        self, idx: torch.Tensor, state: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Attention weights of every layer, each (B, nh, T, T), recorded by forward hooks
        on the attention layers (the forward pass itself never forms them)."""
        maps: list[torch.Tensor] = []

        def record(attn: CausalSelfAttention, args: tuple, _output) -> None:
            maps.append(attn.weights(*args[:2]))

        hooks = [block.attn.register_forward_hook(record) for block in self.transformer.h]
        try:
            self(idx, last_only=True, state=state)
        finally:
            for hook in hooks:
                hook.remove()
        return maps

    def _checked_state(self, state: torch.Tensor | None, B: int, T: int) -> bool:
        """Whether there is a token state to add; a missing or misshapen one is an error."""
        size = self.config.state_size
        if not size and state is None:
            return False
        expected = (B, T, size)
        if not size or state is None or tuple(state.shape) != expected:
            found = "none" if state is None else tuple(state.shape)
            needs = f"a token state {expected}" if size else "no token state (state_size 0)"
            raise ValueError(f"this model takes {needs}, got {found}")
        return True

    def set_dropout(self, p: float) -> None:
        """Change every dropout probability (e.g. for fine-tuning a checkpoint)."""
        self.config.dropout = p
        for module in self.modules():
            if isinstance(module, nn.Dropout):
                module.p = p
            elif isinstance(module, CausalSelfAttention):
                module.dropout = p

    def resize_vocab(self, new_size: int) -> None:
        """Append embedding rows (initialised to the mean embedding); existing ids keep theirs."""
        old = self.transformer.wte.weight
        if new_size < old.shape[0]:
            raise ValueError(f"cannot shrink the vocabulary from {old.shape[0]} to {new_size}")
        if new_size == old.shape[0]:
            return
        wte = nn.Embedding(new_size, self.config.n_embd, device=old.device, dtype=old.dtype)
        with torch.no_grad():
            wte.weight[: old.shape[0]] = old
            wte.weight[old.shape[0] :] = old.mean(dim=0)
        self.transformer.wte = wte
        self.lm_head = nn.Linear(self.config.n_embd, new_size, bias=False)
        self.lm_head.weight = wte.weight
        self.config.vocab_size = new_size
