"""Beam search over many prompts at once: each prompt's beams are rows of one KV cache,
each search exactly what it would be alone (finished hypotheses, length penalty and early
stopping per prompt), and a waiting prompt's search starts as soon as one ends.

Shapes: B rows (the beams of every running search), V vocabulary size.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from seqgen.generation.cache import COPY_BYTES
from seqgen.generation.decoding import (
    NEG_INF,
    LogitsProcessor,
    Settings,
    Waiting,
    adjust_logits,
    ends_row,
    joined,
    processor_makers,
    rows_for,
)
from seqgen.generation.rows import holes_filled


def beam_search(
    model, prompts, settings, outputs, limits, batch_size: int | None
) -> Iterator[tuple[int, int | None]]:
    """A beam search over each prompt, at most `batch_size` prompts' beams decoded together
    as rows of one KV cache; a waiting prompt's search starts as soon as one ends, and each
    search is what it would be alone. Events as `seqgen.generation.engine` yields them: a
    search's ids once it ends."""
    most = min(batch_size or len(prompts), len(prompts))
    rows = rows_for(model, prompts, limits, settings, most * settings.num_beams)
    waiting = Waiting(most, [i for i, limit in enumerate(limits) if limit > 0])
    yield from ((i, None) for i, limit in enumerate(limits) if limit == 0)
    makers = processor_makers(settings)
    searches: dict[int, _Search] = {}
    live: list[int] = []  # the searches whose beams are the cache's rows, in order
    owners: list[int] = []  # the search of each cache row
    logits = None
    while waiting or live:
        new = waiting.admitted(len(live))
        if new:
            logits = joined(logits, rows.admit([prompts[i] for i in new]))
            for i in new:
                processors = [make(prompts[i]) for make in makers]
                searches[i] = _Search(
                    prompts[i], limits[i], settings.length_penalty, logits.device, processors
                )
            live, owners = live + new, owners + new
        logits, top = _candidates(logits, [searches[i] for i in live], settings)
        sources, first = {}, 0  # each running search's new rows, as rows of the cache now
        for i in live:
            width = len(searches[i].beams)
            rows_of_search = slice(first, first + width)
            parents = searches[i].advance(logits[rows_of_search], top[rows_of_search], settings)
            if parents:
                sources[i] = [first + row for row in parents]
            else:
                best = searches.pop(i).best()
                outputs[i].extend(best)
                yield from ((i, token) for token in best)
                yield i, None
            first += width
        live, logits = _refilled(live, sources), None
        keep = [row for i in live for row in sources[i]]
        new_owners = [i for i in live for _ in searches[i].beams]
        same = [t < len(owners) and owners[t] == i for t, i in enumerate(new_owners)]
        rows.select(
            torch.tensor(keep, dtype=torch.long, device=rows.device),
            torch.tensor(same, dtype=torch.bool),
        )
        owners = new_owners
        if live:
            beams = [(searches[i].prompt, beam) for i in live for beam in searches[i].in_rows()]
            tokens = torch.tensor([beam[-1] for _, beam in beams], device=rows.device)
            logits = rows.step(tokens, [prompt + beam for prompt, beam in beams])


def _candidates(
    logits: torch.Tensor, searches: list[_Search], settings: Settings
) -> tuple[torch.Tensor, list[list[tuple[float, int]]]]:
    """Every running beam's next-id logits after the penalties and bans (B, V), and each
    row's best 2k candidates as (score, id), best first: the beam's score plus the id's
    log-probability. All searches' rows at once (per search these small ops cost more than
    the rest of a step on a small model), in chunks of rows whose temporaries reuse freed
    memory (see cache.COPY_BYTES)."""
    beams = [(search, *row) for search in searches for row in search.rows()]
    seen = None
    if settings.repetition_penalty != 1.0:
        seen = torch.zeros_like(logits, dtype=torch.bool)
        for row, (search, beam, _) in enumerate(beams):
            seen[row, search.prompt + beam] = True
    rows = [(beam, processors) for _, beam, processors in beams]
    logits = adjust_logits(logits, seen, settings, rows)
    scores = torch.cat([search.scores[search.rows_order()] for search in searches])
    chunk = max(1, COPY_BYTES // (logits.shape[-1] * logits.element_size()))
    top = []
    for start in range(0, len(logits), chunk):
        rows = slice(start, start + chunk)
        candidates = F.log_softmax(logits[rows], dim=-1).add_(scores[rows, None])
        best = candidates.topk(min(2 * settings.num_beams, logits.shape[-1]), dim=-1)
        top += [
            list(zip(values, ids, strict=True))
            for values, ids in zip(best.values.tolist(), best.indices.tolist(), strict=True)
        ]
    return logits, top


def _refilled(order: list[int], running: dict[int, list[int]]) -> list[int]:
    """The searches of `order` still `running`, the last ones taking the places of those that
    ended, so that the others keep their cache rows (reordering rows copies them)."""
    return [order[place] for place in holes_filled([i in running for i in order])]


class _Search:
    """One prompt's beam search: its live beams (new ids; one cache row each), their
    log-probability sums, and the finished hypotheses with their normalised scores."""

    def __init__(
        self,
        prompt: list[int],
        limit: int,
        length_penalty: float,
        device: torch.device,
        processors: list[LogitsProcessor],
    ) -> None:
        self.prompt, self.limit, self.length_penalty = prompt, limit, length_penalty
        self.beams: list[list[int]] = [[]]
        self.processors = [processors]  # each beam's, at its end
        self.places = [0]  # the row of the search's block that holds each beam
        self.scores = torch.zeros(1, device=device)
        self.finished: list[tuple[float, list[int]]] = []
        self.step = 0  # the beams' length

    def advance(
        self, logits: torch.Tensor, top: list[list[tuple[float, int]]], settings: Settings
    ) -> list[int]:
        """Choose the next beams from `logits` (n, V) and `top`, one row per row of the
        search's block, as `_candidates` gives them; returns, for each row of the new block,
        the row whose beam it continues, or nothing once the search is over."""
        k, step = settings.num_beams, self.step
        self.step += 1
        vocab, scores = logits.shape[1], self.scores
        ranked = _ranked(
            [top[row] for row in self.places],
            vocab,
            2 * k,
            lambda: scores[:, None] + F.log_softmax(logits[self.places], dim=-1),
        )
        chosen: list[tuple[float, int, list[int]]] = []  # (score, parent row, hypothesis)
        for rank, (score, index) in enumerate(ranked):
            if score == NEG_INF:
                break
            parent, token = divmod(index, vocab)
            if token in settings.eos_ids:
                if rank < k:  # an eos outside the top k would not have been chosen
                    length = len(self.beams[parent]) + 1
                    self.finished.append((self.normalised(score, length), self.beams[parent]))
                continue
            hypothesis = self.beams[parent] + [token]
            if ends_row(hypothesis, settings):
                self.finished.append((self.normalised(score, len(hypothesis)), hypothesis))
                continue
            chosen.append((score, parent, hypothesis))
            if len(chosen) == k:
                break
        self.beams = [hypothesis for _, _, hypothesis in chosen]
        self.processors = self._inherited([parent for _, parent, _ in chosen])
        self.scores = torch.tensor([score for score, _, _ in chosen], device=logits.device)
        if not chosen or step == self.limit - 1:
            return []
        if _beams_done(self.finished, self.scores.max().item(), step + 1, settings, self.limit):
            self.beams, self.scores = [], self.scores[:0]  # no running beam can win any more
            return []
        return self._placed([self.places[parent] for _, parent, _ in chosen])

    def _placed(self, parent_rows: list[int]) -> list[int]:
        """Give each new beam a row: its parent's if no earlier beam took it (the row holds
        the beam's keys and values already), else a free one (a copy). Returns the parent
        row of each row. Rows in score order would copy most beams every step."""
        width = len(parent_rows)
        places, taken = [-1] * width, set()
        for beam, row in enumerate(parent_rows):
            if row < width and row not in taken:
                places[beam] = row
                taken.add(row)
        free = iter(sorted(set(range(width)) - taken))
        self.places = [row if row >= 0 else next(free) for row in places]
        return [parent_rows[beam] for beam in self.rows_order()]

    def rows_order(self) -> list[int]:
        """The beam in each row of the search's block."""
        beams = [0] * len(self.places)
        for beam, row in enumerate(self.places):
            beams[row] = beam
        return beams

    def in_rows(self) -> list[list[int]]:
        """The beams in the order of their rows."""
        return [self.beams[beam] for beam in self.rows_order()]

    def rows(self) -> list[tuple[list[int], list[LogitsProcessor]]]:
        """Each beam and its processors, in the order of their rows."""
        return [(self.beams[beam], self.processors[beam]) for beam in self.rows_order()]

    def _inherited(self, parents: list[int]) -> list[list[LogitsProcessor]]:
        """The processors of new beams from their parents': a parent's last child takes
        them, the others copies."""
        left = Counter(parents)
        inherited = []
        for parent in parents:
            left[parent] -= 1
            own = self.processors[parent]
            inherited.append(own if left[parent] == 0 else [p.copy() for p in own])
        return inherited

    def best(self) -> list[int]:
        """The best finished or still running hypothesis (empty if there is none)."""
        running = zip(self.scores.tolist(), self.beams, strict=True)
        found = self.finished + [(self.normalised(s, len(b)), b) for s, b in running]
        return max(found, key=lambda item: item[0])[1] if found else []

    def normalised(self, total: float, length: int) -> float:
        return total / max(length, 1) ** self.length_penalty


def _ranked(
    top: list[list[tuple[float, int]]],
    vocab: int,
    first: int,
    everything: Callable[[], torch.Tensor],
) -> Iterator[tuple[float, int]]:
    """(score, index into the flattened candidates (n, V)) from best to worst: the first
    `first` from each beam's best (`top`, in the beams' order; ties go to the earlier
    beam), the rest, only if needed, from a sort of `everything`, the candidates."""
    merged = [(score, beam * vocab + token) for beam, row in enumerate(top) for score, token in row]
    best = sorted(merged, key=lambda item: -item[0])[:first]
    yield from best
    if len(top) * vocab > first:
        done = {index for _, index in best}  # ties may order differently in the full sort
        ordered = everything().flatten().sort(descending=True)
        for score, index in zip(ordered.values.tolist(), ordered.indices.tolist(), strict=True):
            if index not in done:
                yield score, index


def _beams_done(finished, best_running: float, length: int, settings: Settings, limit: int) -> bool:
    """Whether no running beam can still beat the worst of the best num_beams finished."""
    if len(finished) < settings.num_beams:
        return False
    if settings.early_stopping:
        return True
    worst = sorted(score for score, _ in finished)[-settings.num_beams]
    # log-probability sums only fall; with a positive length penalty the longest possible
    # hypothesis divides by the most, so that bounds what a running beam can still reach
    reach = limit if settings.length_penalty > 0 else length
    return best_running / max(reach, 1) ** settings.length_penalty <= worst
