"""seqgen.cpu: the Linear kernels timed fastest at load for inference."""

import copy
import itertools

import pytest
import torch

from seqgen import cpu
from seqgen.generation.engine import generate

# the compiled product costs its first use about 20 s: its tests are in the slow tier
KERNELS = [pytest.param(k, marks=pytest.mark.slow) if k == "compiled" else k for k in cpu.KERNELS]


def needs_packing(model):
    if not cpu.packing_available(model):
        pytest.skip("this torch build has no oneDNN packed linear")


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_kernel_computes_the_linear(kernel, dtype):
    torch.manual_seed(0)
    # a square one without bias too: a compiled build serves every shape, with or without
    linear = torch.nn.Linear(48, 40).to(dtype)
    square = torch.nn.Linear(48, 48, bias=False).to(dtype)
    if kernel == "packed":
        needs_packing(linear)
    if kernel == "compiled" and not cpu.compiled_available("cpu"):
        pytest.skip("no C++ compiler for TorchInductor here")
    for layer, kernels in (
        (linear, (kernel, "plain", "plain")),
        (linear, ("plain", kernel, "plain")),
        (linear, ("plain", "plain", kernel)),
        (square, (kernel, kernel, kernel)),
    ):
        fast = cpu.InferenceLinear(layer, *kernels)
        # one row, a few (up to FEW_ROWS) and many
        for shape in [(1, 48), (1, 1, 48), (3, 48), (2, 2, 48), (2, 5, 48)]:
            x = torch.randn(*shape).to(dtype)
            with torch.no_grad():
                expected, found = layer(x), fast(x)
            assert found.shape == expected.shape and found.dtype == dtype
            # row-major as nn.Linear's: a transposed output slowed attention and softmaxes
            assert found.is_contiguous(), (kernels, shape)
            tolerance = 1e-5 if dtype == torch.float32 else 2e-2
            assert torch.allclose(found.float(), expected.float(), rtol=tolerance, atol=tolerance)
    plain = cpu.InferenceLinear(linear, "plain", "plain", "plain")
    assert plain.packed is None  # only the layouts its kernels read are kept
    with pytest.raises(ValueError, match="among plain, packed, compiled: plain, mkl, plain"):
        cpu.InferenceLinear(linear, "plain", "mkl", "plain")


def test_each_row_count_runs_its_own_kernel(monkeypatch):
    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 8)
    needs_packing(linear)
    fast = cpu.InferenceLinear(linear, "plain", "packed", "compiled")
    ran = []
    monkeypatch.setattr(
        cpu, "LINEAR_PRODUCT", lambda rows, *_: ran.append(len(rows)) or rows[:, :8]
    )
    monkeypatch.setattr(
        torch.ops.mkldnn, "_linear_pointwise", lambda x, *_: ran.append(("packed", len(x))) or x
    )
    monkeypatch.setattr(
        torch.nn.functional, "linear", lambda x, *_: ran.append(("plain", len(x))) or x
    )
    for rows in (1, 2, cpu.FEW_ROWS, cpu.FEW_ROWS + 1):
        fast(torch.zeros(rows, 16))
    assert ran == [("plain", 1), ("packed", 2), ("packed", cpu.FEW_ROWS), cpu.FEW_ROWS + 1]


def test_fast_linears_give_the_same_outputs(model):
    needs_packing(model)
    packed = copy.deepcopy(model)
    kernels = ("packed", "packed", "packed")
    assert cpu.fast_linears(packed, kernels) == kernels
    assert isinstance(packed.lm_head, cpu.InferenceLinear)
    x = torch.randint(0, 40, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (packed(x) - model(x)).abs().max() < 1e-4
    assert generate(packed, [[1], [12, 13]], 20, temperature=0) == generate(
        model, [[1], [12, 13]], 20, temperature=0
    )
    timed = copy.deepcopy(model)  # timed on this machine: whatever it picks decodes alike
    assert cpu.fast_linears(timed) in (None, *itertools.product(cpu.KERNELS, repeat=3))
    assert generate(timed, [3, 4], 20, temperature=0) == generate(model, [3, 4], 20, temperature=0)


def test_each_row_count_gets_the_kernel_timed_fastest(model, monkeypatch):
    needs_packing(model)
    asked = []

    def fastest(timer, counts, among, picks=None):
        asked.append((tuple(counts), tuple(among)))
        return picks[tuple(counts)]

    x = torch.randint(0, 40, (3, 12), generator=torch.Generator().manual_seed(3))
    for picks in (
        ("plain", "plain", "plain"),
        ("packed", "plain", "plain"),
        ("plain", "packed", "plain"),
        ("plain", "plain", "packed"),
    ):
        by_rows = dict(zip(((1,), (cpu.FEW_ROWS,), cpu.BATCH_ROWS), picks, strict=True))
        monkeypatch.setattr(
            cpu.KernelTimer, "fastest", lambda t, r, a, p=by_rows: fastest(t, r, a, p)
        )
        candidate = copy.deepcopy(model)
        chosen = cpu.fast_linears(candidate)
        if picks == ("plain", "plain", "plain"):  # nothing beats nn.Linear: left as it is
            assert chosen is None and isinstance(candidate.lm_head, torch.nn.Linear)
            continue
        assert chosen == picks
        head = candidate.lm_head
        assert (head.one_row, head.few_rows, head.many_rows) == picks
        assert (head.weight is not None) is ("plain" in chosen)
        with torch.no_grad():
            assert (candidate(x) - model(x)).abs().max() < 1e-4
            assert (candidate(x[:1, -1:]) - model(x[:1, -1:])).abs().max() < 1e-4
            assert (candidate(x[:2, -1:]) - model(x[:2, -1:])).abs().max() < 1e-4
    # a model this small reads its weights from the caches: the compiled product is no candidate
    eager = ("plain", "packed")
    assert set(asked) == {((1,), eager), ((cpu.FEW_ROWS,), eager), (cpu.BATCH_ROWS, eager)}
    asked.clear()
    monkeypatch.setattr(cpu, "COMPILED_MIN_BYTES", 0)
    monkeypatch.setattr(cpu, "compiled_available", lambda device: True)
    cpu.fast_linears(copy.deepcopy(model))
    every = (*eager, "compiled")  # up to a few rows; computed, not read, beyond
    assert set(asked) == {((1,), every), ((cpu.FEW_ROWS,), every), (cpu.BATCH_ROWS, eager)}


def test_many_rows_take_the_kernel_least_slower_at_every_batch_size(model, monkeypatch):
    needs_packing(model)
    timer = cpu.KernelTimer(model, ["plain", "packed"])
    # plain a little faster at 8 rows, packed much faster at 32: packed loses least
    times = {8: {"plain": 1.0, "packed": 1.03}, 32: {"plain": 1.2, "packed": 1.0}}
    rows_timed = []

    def median_seconds(calls):
        (rows,) = {rows for _, rows in calls.values()}
        rows_timed.append(rows)
        return {kernel: times[rows][kernel] for kernel in calls}

    monkeypatch.setattr(cpu.KernelTimer, "_step", lambda timer, kernel, rows: (kernel, rows))
    monkeypatch.setattr(cpu, "median_seconds", median_seconds)
    assert timer.fastest([8, 32], ["plain", "packed"]) == "packed"
    assert rows_timed == [8, 32]
    times[32] = {"plain": 1.02, "packed": 1.0}  # now plain's worst (1.02) is below packed's (1.03)
    assert timer.fastest([8, 32], ["plain", "packed"]) == "plain"
    assert timer.fastest([32], ["plain", "packed"]) == "packed"  # one count: the fastest
    # far slower at 8 rows: not timed at 32 (which would have made it the choice)
    times[8], times[32] = {"plain": 2.0, "packed": 1.0}, {"plain": 1.0, "packed": 9.0}
    rows_timed.clear()
    assert timer.fastest([8, 32], ["plain", "packed"]) == "packed" and rows_timed == [8]


def test_a_model_without_linears_is_left_alone():
    model = torch.nn.Sequential(torch.nn.Embedding(4, 8))
    assert cpu.fast_linears(model) is None


@pytest.mark.slow
def test_compiled_products_build_once_per_kind_of_input(model):
    """A compiled product is built once per kind of input (dtypes, one row or several) and
    serves every layer's shape after that: decoding fp32 and bf16 models, one row and beams,
    with compiled float and int8 products, builds four kinds of each, and decodes as the eager
    products do."""
    from seqgen import quantize

    needs_packing(model)
    if not cpu.compiled_available("cpu"):
        pytest.skip("no C++ compiler for TorchInductor here")
    for product in (cpu.LINEAR_PRODUCT, quantize.FUSED_PRODUCT):
        product._built.clear()
    for dtype in (torch.float32, torch.bfloat16):
        plain = copy.deepcopy(model).to(dtype)
        fast, int8 = copy.deepcopy(plain), copy.deepcopy(plain)
        cpu.fast_linears(fast, ("compiled", "compiled", "packed"))
        quantize.quantize_int8(int8, "fused")
        eager_int8 = copy.deepcopy(plain)
        quantize.quantize_int8(eager_int8, "dequantized")
        for decoder, reference in ((fast, plain), (int8, eager_int8)):
            for prompts, options in (
                ([5, 6, 7], {"temperature": 0}),
                ([[5, 6, 7], [8]], {"num_beams": 2}),
            ):
                found = generate(decoder, prompts, 6, **options)
                if dtype == torch.float32:  # bf16 rounds the sums apart: near ties may differ
                    assert found == generate(reference, prompts, 6, **options)
    empty = cpu.LINEAR_PRODUCT(torch.empty(0, 64), torch.ones(32, 64), torch.ones(32))
    assert empty.shape == (0, 32)  # no rows: computed eagerly, no build assumes it
    # the float product: one row and a few (two beams), fp32 and bf16
    assert {(one_row, rows) for _, one_row, rows, *_ in cpu.LINEAR_PRODUCT._built} == {
        (one, dtype) for one in (True, False) for dtype in (torch.float32, torch.bfloat16)
    }
    # int8: one row and beams, fp32 and bf16 activations
    assert {(one_row, rows) for _, one_row, rows, *_ in quantize.FUSED_PRODUCT._built} == {
        (one, dtype) for one in (True, False) for dtype in (torch.float32, torch.bfloat16)
    }


def test_a_bf16_model_keeps_float32_keys_and_values_where_that_attends_faster(monkeypatch):
    cpu.float_attention_faster.cache_clear()
    assert isinstance(cpu.float_attention_faster(2, 8), bool)  # timed here
    for faster in (True, False):
        monkeypatch.setattr(cpu, "float_attention_faster", lambda heads, size, f=faster: f)
        expected = torch.float32 if faster else torch.bfloat16
        assert cpu.cache_dtype(torch.bfloat16, torch.device("cpu"), 2, 8) == expected
        assert cpu.cache_dtype(torch.float32, torch.device("cpu"), 2, 8) == torch.float32
        assert cpu.cache_dtype(torch.bfloat16, torch.device("meta"), 2, 8) == torch.bfloat16


@pytest.mark.parametrize("positions", ["learned", "relative"])
def test_a_bf16_model_attends_over_a_float32_cache(positions):
    """Prefilled, then a token at a time over float32 keys and values, a bf16 model gives the
    logits of its own full forward pass, with learned and relative positions."""
    from seqgen.config import ModelConfig
    from seqgen.generation.cache import KVCache
    from seqgen.model import GPT

    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=40, block_size=32, n_layer=2, n_head=2, n_embd=16, pos_embedding=positions
    )
    model = GPT(config).eval().to(torch.bfloat16)
    ids = torch.randint(0, 40, (2, 10), generator=torch.Generator().manual_seed(1))
    cache = KVCache(config, 2, 10, torch.device("cpu"), torch.float32)
    with torch.no_grad():
        whole = model(ids).float()
        steps = [model(ids[:, :6], cache=cache)[:, -1]]
        steps += [model(ids[:, t : t + 1], cache=cache)[:, -1] for t in range(6, 10)]
    assert cache.k.dtype == torch.float32 and steps[-1].dtype == torch.bfloat16
    found = torch.stack([s.float() for s in steps], dim=1)
    assert (found - whole[:, 5:]).abs().max() < 0.01  # a wrong input moves them by 0.4


def test_a_float32_cache_decodes_a_bf16_model_as_its_own_dtype_does(model, monkeypatch):
    """Greedy, beams and the shared prompt of several samples: a bf16 model decodes over
    float32 keys and values to the same ids as over bf16 ones (this model's choices are far
    from ties), and its cache holds float32 where that attends faster."""
    from seqgen.generation import rows

    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    found = {}
    for faster in (True, False):
        monkeypatch.setattr(cpu, "float_attention_faster", lambda heads, size, f=faster: f)
        assert rows.Rows(bf16, 8).cache.k.dtype == (torch.float32 if faster else torch.bfloat16)
        found[faster] = [
            generate(bf16, [[3, 4, 5], [7]], 12, temperature=0),
            generate(bf16, [[3, 4, 5], [7]], 8, num_beams=3),
            generate(bf16, [[3, 4, 5]] * 3, 8, temperature=0.8, seed=1),
        ]
    assert found[True] == found[False]
