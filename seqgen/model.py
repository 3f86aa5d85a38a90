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
from seqgen.relative import RelativeAttention, relative_logits

COPY_BYTES = 1 << 24  # below glibc's largest mmap threshold (32 MiB): freed memory is reused


class KVCache:
    """Keys and values of every layer, preallocated for `max_len` positions: (B, nh, L, hs) each.

    `length` positions are filled. Beam search reorders the batch with `select`.
    """

    def __init__(self, config: ModelConfig, batch_size: int, max_len: int, device: torch.device,
                 dtype: torch.dtype, prefix: SharedPrefix | None = None) -> None:  # fmt: skip
        shape = (config.n_layer, batch_size, config.n_head, max_len, config.n_embd // config.n_head)
        # the buffers hold batch_size rows; k and v are views of the rows in use
        self._k = self.k = torch.zeros(shape, device=device, dtype=dtype)
        self._v = self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0
        self.prefix = prefix

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    @property
    def offset(self) -> int:
        """Positions before the rows' own: the shared prefix's."""
        return self.prefix.length if self.prefix is not None else 0

    def select(self, batch_index: torch.Tensor, held: torch.Tensor | None = None) -> None:
        """Keep (and repeat) the batch rows in `batch_index`, e.g. surviving beams.

        held[t]: how many first positions row t already holds of its new source (all of
        them for a row that stays, a prompt's for another beam of that prompt), which need
        not move. A beam search selects every step, so only what differs moves, in place
        within the buffers' rows; copying whole caches dominated its time.
        """
        rows, n = batch_index.numel(), self.length
        if self.prefix is not None:
            self.prefix.regroup(self.prefix.group[batch_index])
        if rows > self._k.shape[1]:  # more rows than the buffers hold: new buffers
            self._k = self.k = self._grown(self.k, batch_index)
            self._v = self.v = self._grown(self.v, batch_index)
            return
        layers, _, nh, _, hs = self.k.shape
        starts: dict[int, list[int]] = {}  # rows by the first position that moves
        for row, start in enumerate(held.tolist() if held is not None else [0] * rows):
            if start < n:
                starts.setdefault(start, []).append(row)
        sources = []  # (first position that moves, target rows, their source rows)
        for start, group in starts.items():
            rows_moving = torch.tensor(group, device=self.k.device)
            sources.append((start, rows_moving, batch_index[rows_moving]))
        # some layers at a time, in copies small enough to reuse freed memory (a larger one
        # gets fresh pages from the system, whose faults cost as much as the copy)
        layer_bytes = sum(len(group) * (n - start) for start, group, _ in sources) * nh * hs
        layer_bytes *= self.k.element_size()
        chunk = max(1, COPY_BYTES // max(layer_bytes, 1))
        for name in ("k", "v"):
            cache, target = getattr(self, name), getattr(self, "_" + name)[:, :rows]
            for first in range(0, layers, chunk):
                some = slice(first, first + chunk)
                # read everything that moves before anything is written (the rows overlap)
                parts = [cache[some, source, :, start:n] for start, _, source in sources]
                for (start, group, _), part in zip(sources, parts, strict=True):
                    target[some, group, :, start:n] = part
            setattr(self, name, target)

    def resize(self, rows: int) -> None:
        """Use the buffers' first `rows` rows (at most as many as they hold)."""
        self.k, self.v = self._k[:, :rows], self._v[:, :rows]

    def add_rows(self, k: torch.Tensor | None, v: torch.Tensor | None, start: int,
                 count: int = 0) -> None:  # fmt: skip
        """Append rows whose keys and values (n_layer, n, nh, W, hs) fill positions
        [start, start + W) of the filled ones (zeros before them); with k and v None,
        `count` rows of zeros (rows that read all they have so far from a shared prefix)."""
        rows, n = self.k.shape[1], count if k is None else k.shape[1]
        if rows + n > self._k.shape[1]:
            kept = torch.arange(rows, device=self.k.device)
            self._k, self._v = (self._grown(t, kept, rows + n) for t in (self.k, self.v))
        self.resize(rows + n)
        for cache, new in ((self.k, k), (self.v, v)):
            cache[:, rows:, :, : self.length] = 0  # padding must be finite: masked, not read
            if new is not None:
                cache[:, rows:, :, start : start + new.shape[3]] = new

    def write_rows(self, rows: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   start: int) -> None:  # fmt: skip
        """Overwrite rows `rows` at positions [start, start + W) with k and v (n_layer, n,
        nh, W, hs): re-prefilled windows."""
        width = k.shape[3]
        self.k[:, rows, :, start : start + width] = k
        self.v[:, rows, :, start : start + width] = v

    def move(self, shift: int) -> None:
        """Move the filled positions of every row `shift` places right (left if negative),
        making room on the left for a wider row, or at the end by dropping padding."""
        n = self.length
        for cache in (self.k, self.v):
            if shift > 0:
                cache[:, :, :, shift : n + shift] = cache[:, :, :, :n].clone()
            else:
                cache[:, :, :, : n + shift] = cache[:, :, :, -shift:n].clone()
        self.length = n + shift

    def _grown(self, cache: torch.Tensor, batch_index: torch.Tensor,
               rows: int | None = None) -> torch.Tensor:  # fmt: skip
        """A new buffer of `rows` rows (default: one per index) starting with the filled
        positions of the rows in `batch_index`."""
        shape = (cache.shape[0], rows or batch_index.numel(), *cache.shape[2:])
        grown = torch.empty(shape, device=cache.device, dtype=cache.dtype)
        grown[:, : batch_index.numel(), :, : self.length] = cache[:, batch_index, :, : self.length]
        return grown


class SharedPrefix:
    """Keys and values of prompts that several rows continue (the samples of one prompt),
    held once instead of once per row: (n_layer, G, nh, P, hs) each, left-padded to P.
    Attention reads a prompt's keys once per step for all its rows; 16 samples of a long
    prompt otherwise read it 16 times, most of what a decode step reads.

    Attributes:
        group: (B,) the prompt of each row.
        mask: (G, P) False at padding, or None.
    """

    def __init__(self, k: torch.Tensor, v: torch.Tensor, group: torch.Tensor,
                 mask: torch.Tensor | None) -> None:  # fmt: skip
        self.k, self.v, self.mask = k, v, mask
        self.regroup(group)

    @property
    def length(self) -> int:
        return self.k.shape[3]

    def regroup(self, group: torch.Tensor) -> None:
        """Set each row's prompt (rows left or moved). `members`: (prompt, its rows, their
        count); the rows as a slice where they are contiguous (as admitted), whose views
        spare attention an indexed copy of them."""
        self.group = group
        self.members = []
        for g in group.unique().tolist():
            rows = (group == g).nonzero()[:, 0]
            first, count = int(rows[0]), len(rows)
            contiguous = int(rows[-1]) - first + 1 == count
            self.members.append((g, slice(first, first + count) if contiguous else rows, count))


def attend_with_prefix(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       prefix: SharedPrefix, layer: int, mask: torch.Tensor | None
                       ) -> torch.Tensor:  # fmt: skip
    """Attention of each row's queries (B, nh, T, hs) over its prompt in `prefix` and its own
    keys and values (B, nh, S, hs), `mask` (B, 1, T, S) or None over its own. One softmax
    over both; each prompt's keys and values are read once for all its rows."""
    B, nh, T, hs = q.shape
    scale = 1.0 / math.sqrt(hs)
    if mask is None and T > 1:
        mask = causal_mask(T, k.size(2), q.device)
    own = (q @ k.transpose(-2, -1)).float() * scale  # (B, nh, T, S)
    if mask is not None:
        own = own.masked_fill(~mask, float("-inf"))
    keys, values = prefix.k[layer], prefix.v[layer]  # (G, nh, P, hs)
    P = keys.shape[2]
    shared = own.new_empty(B, nh, T, P)
    for g, rows, count in prefix.members:  # (nh, R * T, hs) @ (nh, hs, P) per prompt
        scores = q[rows].transpose(0, 1).reshape(nh, -1, hs) @ keys[g].transpose(-2, -1)
        shared[rows] = scores.float().view(nh, count, T, P).transpose(0, 1) * scale
    if prefix.mask is not None:
        shared = shared.masked_fill(~prefix.mask[prefix.group][:, None, None, :], float("-inf"))
    weights = torch.softmax(torch.cat([shared, own], dim=-1), dim=-1).to(q.dtype)
    y = weights[..., P:] @ v  # (B, nh, T, hs)
    for g, rows, count in prefix.members:
        attended = weights[rows, :, :, :P].transpose(0, 1).reshape(nh, -1, P) @ values[g]
        y[rows] += attended.view(nh, count, T, hs).transpose(0, 1)
    return y


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        # q, k and v projections fused in one matmul, as GPT-2's c_attn
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        if config.pos_embedding == "relative":
            # Music Transformer's E_r: row block_size - 1 - d embeds distance d, per head
            head_size = config.n_embd // config.n_head
            self.rel = nn.Parameter(0.02 * torch.randn(config.n_head, config.block_size, head_size))

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """mask: (B, 1, T, S) True = may attend, or None for plain causal attention."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if cache is not None:
            start = cache.length
            cache.k[layer, :, :, start : start + T] = k
            cache.v[layer, :, :, start : start + T] = v
            k = cache.k[layer, :, :, : start + T]  # (B, nh, S, hs), S = start + T
            v = cache.v[layer, :, :, : start + T]
        weights = None
        shared = cache.prefix if cache is not None else None
        relative = hasattr(self, "rel")
        if relative and cache is None and mask is None and not need_weights and x.is_cpu and (
            not self.training or not self.dropout
        ):  # training's case, blockwise (seqgen/relative.py): 4x faster than the mask below
            allowed = causal_mask(T, T, x.device)
            y = RelativeAttention.apply(q, k, v, self.rel[:, self.rel.size(1) - T :], allowed)
            return self._merged(y), None
        if relative:  # relative logits go in as an additive mask
            if shared is not None:
                raise ValueError("a shared prefix needs absolute positions")
            allowed = mask if mask is not None else causal_mask(T, k.size(2), x.device)
            bias = relative_logits(q, self.rel, k.size(2)) / math.sqrt(k.size(-1))
            mask = bias.to(q.dtype).masked_fill(~allowed, float("-inf"))
        if shared is not None:
            y = attend_with_prefix(q, k, v, shared, layer, mask)
        elif need_weights:  # the manual path, only to return the attention weights
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))  # (B, nh, T, S)
            if mask is None or mask.dtype == torch.bool:
                allowed = mask if mask is not None else causal_mask(T, k.size(2), x.device)
                scores = scores.masked_fill(~allowed, float("-inf"))
            else:
                scores = scores + mask
            weights = torch.softmax(scores, dim=-1)
            y = weights @ v
        else:
            y = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                is_causal=mask is None and T > 1 and k.size(2) == T,
                dropout_p=self.dropout if self.training else 0.0,
            )  # (B, nh, T, hs)
        return self._merged(y), weights

    def _merged(self, y: torch.Tensor) -> torch.Tensor:
        """The heads' outputs (B, nh, T, hs) side by side, projected: (B, T, C)."""
        B, _, T, _ = y.shape
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(B, T, -1)))


def causal_mask(T: int, S: int, device: torch.device) -> torch.Tensor:
    """(T, S) True where query i (at absolute position S - T + i) may see key j."""
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)


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
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.mlp = MLP(config)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, cache: KVCache | None = None,
        layer: int = 0, need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
        attended, weights = self.attn(self.ln_1(x), mask, cache, layer, need_weights)
        x = x + attended
        return x + self.mlp(self.ln_2(x)), weights


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
        logits, _ = self._run(idx, input_pos, cache, padding_mask, last_only, state,
                              need_weights=False)  # fmt: skip
        return logits

    def attention_maps(self, idx: torch.Tensor, state: torch.Tensor | None = None
                       ) -> list[torch.Tensor]:  # fmt: skip
        """Attention weights of every layer, each (B, nh, T, T), through the manual path."""
        _, maps = self._run(idx, None, None, None, True, state, need_weights=True)
        return maps

    def _run(self, idx, input_pos, cache, padding_mask, last_only, state, need_weights):
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
            x = x + self.transformer.wse(state.to(x.dtype))
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
        maps = []
        for layer, block in enumerate(self.transformer.h):
            x, weights = block(x, mask, cache, layer, need_weights)
            maps.append(weights)
        if cache is not None:
            cache.length = start + T
        x = self.transformer.ln_f(x[:, -1:] if last_only else x)
        return self.lm_head(x), maps

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
