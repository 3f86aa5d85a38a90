"""seqgen.cpu: packed CPU weights."""

import pytest
import torch

from seqgen.generation.engine import generate


def test_packed_cpu_linears_give_the_same_outputs(model):
    import copy

    from seqgen.cpu import PackedLinear, pack_linears

    packed = copy.deepcopy(model)
    if not pack_linears(packed, measure=False):
        pytest.skip("this torch build has no oneDNN packed linear")
    assert isinstance(packed.lm_head, PackedLinear)
    x = torch.randint(0, 40, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (packed(x) - model(x)).abs().max() < 1e-4
    assert generate(packed, [[1], [12, 13]], 20, temperature=0) == generate(
        model, [[1], [12, 13]], 20, temperature=0
    )


def test_weights_are_packed_only_where_it_pays(model, monkeypatch):
    import copy

    from seqgen import cpu

    if not cpu.packing_available(model):
        pytest.skip("this torch build has no oneDNN packed linear")
    assert cpu.PackingTimer(model).pays() in (True, False)  # timed on this machine
    x = torch.randint(0, 40, (3, 12), generator=torch.Generator().manual_seed(3))
    for batched, single in ((False, False), (True, True), (True, False)):
        monkeypatch.setattr(
            cpu.PackingTimer, "pays", lambda _, rows=1, b=batched, s=single: b if rows > 1 else s
        )
        candidate = copy.deepcopy(model)
        assert cpu.pack_linears(candidate) is batched
        assert isinstance(candidate.lm_head, cpu.PackedLinear) is batched
        if batched:  # a single row keeps the plain weight where only batches gain
            assert (candidate.lm_head.weight is not None) is (not single)
            with torch.no_grad():
                assert (candidate(x) - model(x)).abs().max() < 1e-4
                assert (candidate(x[:1, -1:]) - model(x[:1, -1:])).abs().max() < 1e-4
