"""The rows of a batch decoded together on one KV cache: rows join (waiting prompts admitted
as others finish), leave, are reordered (beams), and slide their own windows past the context.

Layout: each row's ids sit at the right end of the cache's L filled slots, so a row admitted
later or holding fewer ids has padding on its left, which `real` masks out. Every row has its
own positions and its own window, so it computes what it would alone in a batch of one.
Shapes: B rows, C slots, V vocabulary size, W the widest window being prefilled.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from seqgen.cpu import cache_dtype
from seqgen.generation.cache import KVCache, SharedPrefix
from seqgen.model import GPT


class Rows:
    """Rows sharing one KV cache of `slots` positions, each with its own positions and window.

    With `share`, rows of one prompt read it from a `SharedPrefix` (the samples of a prompt),
    and the cache holds what each row generates. That needs windows that never slide: the
    caller shares only where every prompt and its new ids fit the context.
    """

    def __init__(
        self,
        model: GPT,
        slots: int,
        *,
        window_keep: int | None = None,
        state=None,
        share: bool = False,
        most_rows: int = 1,
    ) -> None:
        self.model = model
        self.block = model.config.block_size
        self.keep = _kept(self.block, window_keep)
        self.state = state
        self.share = share
        parameter = next(model.parameters())
        self.device = parameter.device
        config = model.config
        self.kv_dtype = cache_dtype(
            parameter.dtype, self.device, config.n_head, config.n_embd // config.n_head
        )
        self.cache = KVCache(config, most_rows, slots, self.device, self.kv_dtype)
        self.cache.resize(0)
        self.real = torch.zeros(0, slots, dtype=torch.bool, device=self.device)  # not padding
        self.next_pos = torch.zeros(0, 1, dtype=torch.long, device=self.device)
        self.last_state: torch.Tensor | None = None  # (B, state size) after each row's last id
        if state is not None:
            self.last_state = torch.zeros(0, state.size, device=self.device)
        # where each row's prompt ends: rows that `select` repeats from one (a prompt's
        # beams) hold the same slots up to there, so those need not move
        self.prompt_end = torch.zeros(0, dtype=torch.long, device=self.device)
        self.groups: dict[tuple[int, ...], int] = {}  # share: each prompt's prefix group
        self.group_logits = self.group_states = None

    @classmethod
    def fitting(
        cls,
        model: GPT,
        prompts: list[list[int]],
        limits: list[int],
        *,
        window_keep: int | None,
        state,
        most_rows: int,
        share_prompts: bool = False,
    ) -> Rows:
        """Rows with as many cache slots as one of these prompts may need with its limit of
        new ids. share_prompts: the samples of one prompt read it from a shared prefix, where
        that works (repeated prompts, absolute positions, no window that slides)."""
        block = model.config.block_size
        keep = _kept(block, window_keep)
        spans = [
            _window_length(len(p), block, keep) + n for p, n in zip(prompts, limits, strict=True)
        ]
        keys = [tuple(p) for p in prompts]
        share = (
            share_prompts
            and model.config.pos_embedding != "relative"
            and len(set(keys)) < len(keys)
            and max(spans) <= block
        )
        slots = min(block, max(limits) if share else max(spans))
        return cls(
            model,
            max(slots, 1),
            window_keep=window_keep,
            state=state,
            share=share,
            most_rows=most_rows,
        )

    def window(self, sequence: Sequence[int]) -> Sequence[int]:
        """What a row holds of `sequence` when it is (re-)prefilled: all of it within the
        context, else its last `keep` ids."""
        return sequence[len(sequence) - _window_length(len(sequence), self.block, self.keep) :]

    def admit(self, sequences: list[list[int]]) -> torch.Tensor:
        """New rows after the current ones, one per sequence; returns their next logits (n, V).
        Repeated sequences (the samples of one prompt) are computed once."""
        # a token state comes from the whole sequence: equal windows of different histories differ
        keys = [tuple(s) if self.state is not None else tuple(self.window(s)) for s in sequences]
        if self.share:
            return self._admit_shared(keys)
        unique = {key: i for i, key in enumerate(dict.fromkeys(keys))}
        k, v, real, logits, states = self._prefill(list(unique))
        index = torch.tensor([unique[key] for key in keys], device=self.device)
        self._place(
            k[:, index], v[:, index], real[index], states[index] if states is not None else None
        )
        return logits[index]

    def step(self, tokens: torch.Tensor, sequences: list[list[int]]) -> torch.Tensor:
        """Feed each row its next id (B,), the last of its sequence; returns (B, V) next logits.
        A row whose window is full re-prefills the end of its sequence instead."""
        tokens = tokens.to(self.device)
        sliding = []
        if not self.share:
            sliding = (self.real.sum(1) >= self.block).nonzero()[:, 0].tolist()
        if len(sliding) == len(tokens):  # nothing to feed: every row re-prefills
            self.real[:] = False
            return self._slide(sliding, sequences)
        self.real[sliding] = False
        self._make_room(self.keep if sliding else 0)
        fed = torch.ones(len(tokens), dtype=torch.bool, device=self.device)
        fed[sliding] = False
        self.real[:, self.cache.length] = fed  # a row that slides reads only itself here
        state = None
        if self.state is not None:
            advanced = self.state.advance(self.last_state, tokens)
            self.last_state = torch.where(fed[:, None], advanced, self.last_state)
            state = self.last_state[:, None]
        logits = self._forward(tokens[:, None], self.next_pos * fed[:, None], state)
        self.next_pos = self.next_pos + fed[:, None].long()
        if sliding:  # their windows end where the others' new ids are, leaving no gap
            logits[sliding] = self._slide(sliding, sequences)[sliding]
        return logits

    def select(self, index: torch.Tensor, same_prompt: torch.Tensor | None = None) -> None:
        """Keep (and repeat) the rows in `index`: the surviving beams. `same_prompt` marks the
        rows whose new source continues their prompt (a beam of the same prompt): those hold
        its slots up to the prompt's end already, and a row that stays holds all of its."""
        held = torch.zeros(len(index), dtype=torch.long, device=self.device)
        if same_prompt is not None:
            same_prompt = same_prompt.to(self.device)
            held = torch.where(same_prompt, self.prompt_end[index], held)
            stays = index == torch.arange(len(index), device=self.device)
            held = torch.where(same_prompt & stays, self.cache.length, held)
        self.cache.select(index, held)
        self._keep_rows(index)

    def drop(self, finished: list[int]) -> torch.Tensor:
        """Remove the rows in `finished`: the last rows move into their places, one row's cache
        each, rather than every row shifting. Returns the old place of each remaining row,
        to index the caller's per-row state with."""
        gone = set(finished)
        order = holes_filled([row not in gone for row in range(self.real.shape[0])])
        index = torch.tensor(order, dtype=torch.long, device=self.device)
        stays = index == torch.arange(len(order), device=self.device)
        self.cache.select(index, stays.long() * self.cache.length)  # only movers move
        self._keep_rows(index)
        return index

    def _keep_rows(self, index: torch.Tensor) -> None:
        self.real, self.next_pos = self.real[index], self.next_pos[index]
        self.prompt_end = self.prompt_end[index]
        if self.last_state is not None:
            self.last_state = self.last_state[index]

    def _prefill(self, windows: list[tuple[int, ...]]):
        """Keys, values (n_layer, n, nh, W, hs), the real mask (n, W), next logits (n, V) and
        last states of windows computed alone, left-padded. A key that is a whole sequence
        (with a token state) is cut to its window here. Windows of like lengths are computed
        together (`length_groups`): one batch would pad each to the longest, and prompts of
        4-40 ids spent 45% of such a prefill on padding."""
        cut = [tuple(self.window(w)) for w in windows]
        groups = length_groups([len(w) for w in cut])
        parts = [self._prefill_alike([windows[i] for i in g], [cut[i] for i in g]) for g in groups]
        if len(parts) == 1:
            return parts[0]
        # each group's rows in their places, left-padded to the widest window
        first_k, first_logits = parts[0][0], parts[0][3]
        layers, _, heads, _, head_size = first_k.shape
        n, width = len(windows), max(part[2].shape[1] for part in parts)
        k, v = (first_k.new_zeros(layers, n, heads, width, head_size) for _ in range(2))
        real = torch.zeros(n, width, dtype=torch.bool, device=self.device)
        logits = first_logits.new_empty(n, first_logits.shape[1])
        states = parts[0][4].new_empty(n, parts[0][4].shape[1]) if self.state is not None else None
        for group, (group_k, group_v, group_real, group_logits, group_states) in zip(
            groups, parts, strict=True
        ):
            rows, start = torch.tensor(group, device=self.device), width - group_real.shape[1]
            k[:, rows, :, start:], v[:, rows, :, start:] = group_k, group_v
            real[rows, start:], logits[rows] = group_real, group_logits
            if states is not None:
                states[rows] = group_states
        return k, v, real, logits, states

    def _prefill_alike(self, sequences: list[tuple[int, ...]], windows: list[tuple[int, ...]]):
        """`_prefill` of windows (cut from `sequences`) in one batch, left-padded."""
        width = max(map(len, windows))
        ids = torch.zeros(len(windows), width, dtype=torch.long)
        real = torch.zeros(len(windows), width, dtype=torch.bool)
        states = torch.zeros(len(windows), width, self.state.size) if self.state else None
        for row, window in enumerate(windows):
            ids[row, width - len(window) :] = torch.tensor(window)
            real[row, width - len(window) :] = True
            if states is not None:
                sequence = np.asarray(sequences[row], dtype=np.int64)
                after = self.state.window(sequence, len(sequence) - len(window))
                states[row, width - len(window) :] = torch.from_numpy(after)
        real = real.to(self.device)
        positions = (real.long().cumsum(1) - 1).clamp(min=0)  # (n, W)
        cache = KVCache(self.model.config, len(windows), width, self.device, self.kv_dtype)
        mask = real if not bool(real.all()) else None
        if states is not None:
            states = states.to(self.device)
        logits = self.model(
            ids.to(self.device), positions, cache, mask, last_only=True, state=states
        )[:, -1].float()
        last = states[:, -1] if states is not None else None
        return cache.k, cache.v, real, logits, last

    def _place(
        self, k: torch.Tensor, v: torch.Tensor, real: torch.Tensor, states: torch.Tensor | None
    ) -> None:
        """Append rows whose windows (k, v (n_layer, n, nh, W, hs), real (n, W), last states
        (n, state size)) end at the cache's last filled slot; the cache moves right first
        where it is narrower."""
        width = real.shape[1]
        if self.cache.length < width:  # width <= slots: the rows' padding grows on the left
            self._move(width - self.cache.length)
        end = self.cache.length
        self.cache.add_rows(k, v, end - width)
        placed = torch.zeros(len(real), self.real.shape[1], dtype=torch.bool, device=self.device)
        placed[:, end - width : end] = real
        self.real = torch.cat([self.real, placed])
        self.next_pos = torch.cat([self.next_pos, real.long().sum(1, keepdim=True)])
        self.prompt_end = torch.cat([self.prompt_end, self.prompt_end.new_full((len(real),), end)])
        if self.last_state is not None:
            self.last_state = torch.cat([self.last_state, states])

    def _slide(self, sliding: list[int], sequences: list[list[int]]) -> torch.Tensor:
        """Re-prefill the windows of rows `sliding` in their places (ending at the last filled
        slot); returns (B, V) logits, valid at those rows."""
        keys = [tuple(sequences[row]) for row in sliding]
        k, v, real, logits, states = self._prefill(keys)
        end, width = self.cache.length, real.shape[1]  # a full window ends at >= block slots
        rows = torch.tensor(sliding, device=self.device)
        self.cache.write_rows(rows, k, v, end - width)
        self.real[rows, end - width : end] = real
        self.next_pos[rows] = real.long().sum(1, keepdim=True)
        if self.last_state is not None:
            self.last_state[rows] = states
        self.prompt_end[rows] = 0  # each row's window is its own now
        out = logits.new_zeros(len(self.real), logits.shape[1])
        out[rows] = logits
        return out

    def _make_room(self, keep: int) -> None:
        """Drop the slots that are padding in every row (left behind by rows that ended) once
        they are a quarter of the filled ones, since attention and beam reorders read them
        all, and always when the step's slot is missing. `keep` slots stay for the windows
        that rows re-prefill this step."""
        length = self.cache.length
        if length == 0:
            return
        held = self.real[:, :length]
        first = torch.where(held.any(1), held.int().argmax(1), length)
        unused = min(int(first.min()) if len(first) else length, length - keep)
        if length < self.cache.max_len and unused < max(1, length // 4):
            return
        if unused < 1:
            raise RuntimeError("no room in the KV cache for the next ids")  # a bug, not input
        self._move(-unused)

    def _move(self, shift: int) -> None:
        """Move every row's filled slots `shift` places right (left if negative)."""
        if shift == 0:
            return
        self.cache.move(shift)
        self.real = torch.roll(self.real, shift, dims=1)
        if shift > 0:
            self.real[:, :shift] = False
        else:
            self.real[:, shift:] = False
        self.prompt_end = (self.prompt_end + shift).clamp(min=0)

    def _admit_shared(self, keys: list[tuple[int, ...]]) -> torch.Tensor:
        """Rows that read their prompts from the shared prefix: prompts not already there are
        prefilled and added as groups (groups no row reads any more are let go)."""
        new = [key for key in dict.fromkeys(keys) if key not in self.groups]
        if new:
            self._add_groups(new, reused={self.groups[key] for key in keys if key in self.groups})
        group = torch.tensor([self.groups[key] for key in keys], device=self.device)
        prefix, rows = self.cache.prefix, len(keys)
        self.cache.add_rows(None, None, self.cache.length, rows)
        prefix.regroup(torch.cat([prefix.group, group]))
        self.real = torch.cat([self.real, self.real.new_zeros(rows, self.real.shape[1])])
        self.next_pos = torch.cat([self.next_pos, prefix.mask[group].long().sum(1, keepdim=True)])
        self.prompt_end = torch.cat([self.prompt_end, self.prompt_end.new_zeros(rows)])
        if self.last_state is not None:
            self.last_state = torch.cat([self.last_state, self.group_states[group]])
        return self.group_logits[group]

    def _add_groups(self, new: list[tuple[int, ...]], reused: set[int]) -> None:
        """Prefill prompts `new` into the shared prefix; groups that no row reads and that
        are not `reused` by the rows being admitted are let go."""
        k, v, real, logits, states = self._prefill(new)
        prefix = self.cache.prefix
        kept = sorted(reused | set(prefix.group.tolist() if prefix is not None else ()))
        renumber = {old: i for i, old in enumerate(kept)}
        keys = [
            key for key, g in sorted(self.groups.items(), key=lambda item: item[1]) if g in renumber
        ]
        width = max(real.shape[1], prefix.length if prefix is not None else 0)
        parts_k, parts_v, parts_real = [], [], []
        if kept:
            old = torch.tensor(kept, device=self.device)
            parts_k.append(_left_padded(prefix.k[:, old], width))
            parts_v.append(_left_padded(prefix.v[:, old], width))
            parts_real.append(_left_padded(prefix.mask[old], width))
        parts_k.append(_left_padded(k, width))
        parts_v.append(_left_padded(v, width))
        parts_real.append(_left_padded(real, width))
        rows = [renumber[g] for g in prefix.group.tolist()] if prefix is not None else []
        group = torch.tensor(rows, dtype=torch.long, device=self.device)
        self.cache.prefix = SharedPrefix(
            torch.cat(parts_k, 1), torch.cat(parts_v, 1), group, torch.cat(parts_real)
        )
        self.groups = {key: i for i, key in enumerate(keys + new)}
        old_logits = self.group_logits[kept] if kept else logits[:0]
        self.group_logits = torch.cat([old_logits, logits])
        if states is not None:
            old_states = self.group_states[kept] if kept else states[:0]
            self.group_states = torch.cat([old_states, states])

    def _forward(
        self, ids: torch.Tensor, positions: torch.Tensor, state: torch.Tensor | None
    ) -> torch.Tensor:
        held = self.real[:, : self.cache.length + ids.shape[1]]
        mask = None if bool(held.all()) else held
        return self.model(ids, positions, self.cache, mask, last_only=True, state=state)[
            :, -1
        ].float()


def holes_filled(kept: Sequence[bool]) -> list[int]:
    """The old places of the items `kept`, in a new order where the last of them take the
    places of those that go: the others stay where they are (moving one costs a copy)."""
    count = sum(kept)
    movers = iter([place for place in range(count, len(kept)) if kept[place]])
    return [place if kept[place] else next(movers) for place in range(count)]


def _kept(block: int, window_keep: int | None) -> int:
    """How many ids a window keeps when it slides: `window_keep`, or 3/4 of the context."""
    return window_keep or max(1, block - block // 4)


def _window_length(length: int, block: int, keep: int) -> int:
    """How much of a sequence of `length` ids a row holds when it is (re-)prefilled."""
    return length if length <= block else keep


def length_groups(lengths: Sequence[int]) -> list[list[int]]:
    """The indices of `lengths` in groups of like lengths, the longest group first: a group
    takes every length above half its longest, so that no row of a batch is more than half
    padding and a prefill makes at most log2(longest / shortest) + 1 passes over the weights."""
    groups: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if not groups or 2 * lengths[i] <= lengths[groups[-1][0]]:
            groups.append([])
        groups[-1].append(i)
    return [sorted(group) for group in groups]  # each in the given order: one group is all


def _left_padded(t: torch.Tensor, width: int) -> torch.Tensor:
    """`t` with its slot dimension (the last of a mask (G, P), the fourth of keys or values
    (n_layer, G, nh, P, hs)) padded on the left to `width`."""
    if t.dim() == 2:
        return torch.nn.functional.pad(t, (width - t.shape[1], 0), value=False)
    return torch.nn.functional.pad(t, (0, 0, width - t.shape[3], 0))
