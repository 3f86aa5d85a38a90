"""seqgen.generation.decoding: logits processors (the n-gram ban, a task's rules) and what
they pass on."""

import pytest
import torch

from seqgen.generation.decoding import NgramBan
from seqgen.generation.engine import generate


class OddAfterEven:
    """A processor: after an even id, only odd ids (and the other way round). It keeps no
    state of its own: the last id is in what it is given."""

    def __init__(self, prompt):
        self.prompt = prompt

    def __call__(self, ids, logits):
        last = (self.prompt + list(ids))[-1]
        logits[list(range(last % 2, 40, 2))] = float("-inf")
        return logits

    def copy(self):
        return self


@pytest.mark.parametrize(
    "options", [dict(temperature=2.0, seed=3, eos_id=5), dict(num_beams=3), dict(temperature=0)]
)
def test_a_processor_bans_ids_as_each_row_grows(model, options):
    prompts = [[1], [2, 3, 4], [12], [12]]
    plain = generate(model, prompts, 16, **options)
    ruled = generate(model, prompts, 16, processor=OddAfterEven, **options)
    for prompt, row in zip(prompts, ruled, strict=True):
        ids = prompt[-1:] + row
        assert all((a + b) % 2 == 1 for a, b in zip(ids, ids[1:], strict=False)), row
    assert plain != ruled  # the successor cycles break the rule somewhere


def rescanned_ngram_ends(ids: list[int], n: int) -> list[int]:
    """The ids that would complete an n-gram already in `ids`, by scanning them all."""
    if len(ids) < n - 1:
        return []
    prefix = ids[len(ids) - n + 1 :] if n > 1 else []
    return [ids[i + n - 1] for i in range(len(ids) - n + 1) if ids[i : i + n - 1] == prefix]


def banned_by(processor, ids: list[int], vocab: int = 8) -> list[int]:
    """The ids a processor bans after the new ids `ids`."""
    logits = processor(ids, torch.zeros(vocab))
    return torch.isinf(logits).nonzero().flatten().tolist()


def test_ngram_ban_equals_a_rescan_and_its_copies_branch_apart():
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 4, (60,), generator=generator).tolist()
    for n in (1, 2, 3, 4):
        ban = NgramBan(n, prompt=[99])  # the prompt does not count
        for step in range(len(ids)):
            expected = sorted(set(rescanned_ngram_ends(ids[:step], n)))
            assert banned_by(ban, ids[:step]) == expected
    ban = NgramBan(2, prompt=[])
    banned_by(ban, [1, 2])
    twin = ban.copy()  # two beams from one: what one sees is not the other's
    assert banned_by(ban, [1, 2, 1]) == [2] and banned_by(twin, [1, 2, 3]) == []


def bigrams(ids):
    return [tuple(ids[i : i + 2]) for i in range(len(ids) - 1)]


@pytest.mark.parametrize("num_beams", [1, 3])
def test_no_repeat_ngram_size_blocks_repeated_ngrams_in_new_ids(model, num_beams):
    plain = generate(model, [1], 30, temperature=0, num_beams=num_beams)
    assert len(set(bigrams(plain))) < len(bigrams(plain))  # the cycle repeats bigrams
    blocked = generate(model, [1], 30, temperature=0, num_beams=num_beams, no_repeat_ngram_size=2)
    assert len(blocked) == 30 and len(set(bigrams(blocked))) == len(bigrams(blocked))
    assert blocked[:5] == plain[:5]  # nothing changes before a repeat would happen


def test_repeated_ngram_ends():
    assert banned_by(NgramBan(3, [99]), [5, 6, 7, 5, 6]) == [7]
    assert banned_by(NgramBan(2, [99]), [5, 6, 5]) == [6]
    assert banned_by(NgramBan(1, [99]), [4, 4, 5]) == [4, 5]
    assert banned_by(NgramBan(3, [99]), [5]) == []
