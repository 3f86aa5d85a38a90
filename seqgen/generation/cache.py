"""Keys and values kept between decoding steps: each row's own (`KVCache`) and prompts that
several rows continue, held once (`SharedPrefix`). Attention reads them in `seqgen.model`."""

from __future__ import annotations

import math

import torch

from seqgen.config import ModelConfig

COPY_BYTES = 1 << 24  # below glibc's largest mmap threshold (32 MiB): freed memory is reused


def causal_mask(T: int, S: int, device: torch.device) -> torch.Tensor:
    """(T, S) True where query i (at absolute position S - T + i) may see key j."""
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)


class KVCache:
    """Keys and values of every layer, preallocated for `max_len` positions: (B, nh, L, hs) each.

    `length` positions are filled. Beam search reorders the batch with `select`.
    """

    def __init__(
        self,
        config: ModelConfig,
        batch_size: int,
        max_len: int,
        device: torch.device,
        dtype: torch.dtype,
        prefix: SharedPrefix | None = None,
    ) -> None:
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

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write layer `layer`'s keys and values (B, nh, T, hs) of the T positions after the
        filled ones; returns the layer's keys and values so far, (B, nh, length + T, hs)."""
        start, T = self.length, k.size(2)
        self.k[layer, :, :, start : start + T] = k
        self.v[layer, :, :, start : start + T] = v
        return self.k[layer, :, :, : start + T], self.v[layer, :, :, : start + T]

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

    def add_rows(
        self, k: torch.Tensor | None, v: torch.Tensor | None, start: int, count: int = 0
    ) -> None:
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

    def write_rows(self, rows: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int) -> None:
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

    def _grown(
        self, cache: torch.Tensor, batch_index: torch.Tensor, rows: int | None = None
    ) -> torch.Tensor:
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

    def __init__(
        self, k: torch.Tensor, v: torch.Tensor, group: torch.Tensor, mask: torch.Tensor | None
    ) -> None:
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

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        layer: int,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Attention of each row's queries (B, nh, T, hs) over its prompt here and its own
        keys and values (B, nh, S, hs), `mask` (B, 1, T, S) or None over its own. One softmax
        over both; each prompt's keys and values are read once for all its rows."""
        B, nh, T, hs = q.shape
        scale = 1.0 / math.sqrt(hs)
        if mask is None and T > 1:
            mask = causal_mask(T, k.size(2), q.device)
        own = (q @ k.transpose(-2, -1)).float() * scale  # (B, nh, T, S)
        if mask is not None:
            own = own.masked_fill(~mask, float("-inf"))
        keys, values = self.k[layer], self.v[layer]  # (G, nh, P, hs)
        P = keys.shape[2]
        shared = own.new_empty(B, nh, T, P)
        for g, rows, count in self.members:  # (nh, R * T, hs) @ (nh, hs, P) per prompt
            scores = q[rows].transpose(0, 1).reshape(nh, -1, hs) @ keys[g].transpose(-2, -1)
            shared[rows] = scores.float().view(nh, count, T, P).transpose(0, 1) * scale
        if self.mask is not None:
            shared = shared.masked_fill(~self.mask[self.group][:, None, None, :], float("-inf"))
        weights = torch.softmax(torch.cat([shared, own], dim=-1), dim=-1).to(q.dtype)
        y = weights[..., P:] @ v  # (B, nh, T, hs)
        for g, rows, count in self.members:
            attended = weights[rows, :, :, :P].transpose(0, 1).reshape(nh, -1, P) @ values[g]
            y[rows] += attended.view(nh, count, T, hs).transpose(0, 1)
        return y
