"""Weight-only int8 (`seqgen.quantize`, `--quantize int8`): the weights round-trip within half
a quantization step, every kernel computes the product of the dequantized weight, a
quantized model decodes with its KV cache as its full forward does and stays close to the
fp32 model, and the commands take the option."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from helpers import reference_greedy

import seqgen
from seqgen.cli import main
from seqgen.generation.engine import generate
from seqgen.quantize import (
    KERNEL_ROWS,
    KERNELS,
    Int8Linear,
    candidate_kernels,
    integer_kernel,
    quantize_int8,
)

EAGER = candidate_kernels(torch.device("cpu"), ["int8pack", "dequantized"])
INTEGER = integer_kernel(torch.device("cpu"))  # built in seconds: tested in the fast tier
CHEAP = EAGER if INTEGER is None else {**EAGER, "integer": INTEGER}
# the compiled kernel costs its first use about 20 s: its tests are in the slow tier
ALL_KERNELS = [pytest.param(n, marks=pytest.mark.slow) if n == "fused" else n for n in KERNELS]


def linear(n_in: int = 48, n_out: int = 40) -> torch.nn.Linear:
    torch.manual_seed(0)
    layer = torch.nn.Linear(n_in, n_out)
    with torch.no_grad():
        layer.weight[3] *= 50  # channels of very different ranges: each has its own scale
        layer.weight[5] = 0  # and one with nothing in it
    return layer


def test_int8_weights_round_trip_within_half_a_step():
    layer = linear()
    quantized = Int8Linear(layer.weight, layer.bias, F.linear)
    assert quantized.weight.dtype == torch.int8 and quantized.weight.abs().max() <= 127
    error = (quantized.dequantized_weight() - layer.weight).abs()
    assert (error <= quantized.scale[:, None] / 2 + 1e-7).all()
    assert quantized.weight.abs().amax(dim=1)[3] == 127  # the channel's largest maps to 127
    assert quantized.dequantized_weight()[5].abs().max() == 0


@pytest.mark.parametrize("name", ALL_KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_kernel_is_the_product_of_the_dequantized_weight(name, dtype):
    kernels = candidate_kernels(torch.device("cpu")) if name == "fused" else CHEAP
    if name not in kernels:
        pytest.skip(f"no {name} kernel on this machine")
    for n_in in (48, 150):  # 150: whole blocks of vectors and a part of one
        if name == "int8pack" and dtype == torch.bfloat16 and n_in % 16:
            continue  # it reads past the row there (`computes_the_product` keeps it out)
        layer = linear(n_in)
        quantized = Int8Linear(layer.weight, layer.bias, kernels[name]).to(dtype)
        for rows in [(1,), (2, 3), (KERNEL_ROWS + 1,)]:  # the last takes the many-row path
            x = torch.randn(*rows, n_in).to(dtype)
            expected = F.linear(x.float(), quantized.dequantized_weight(), layer.bias.detach())
            found = quantized(x)
            assert found.shape == (*rows, 40) and found.dtype == dtype
            assert found.is_contiguous(), (name, rows)  # row-major, as nn.Linear's
            tolerance = 1e-4 if dtype == torch.float32 else 3e-2
            assert torch.allclose(found.float(), expected, rtol=tolerance, atol=tolerance), name


@pytest.mark.parametrize("kernel", ["dequantized", "int8pack", "integer"])
def test_a_quantized_model_decodes_as_its_full_forward_and_close_to_fp32(model, kernel):
    if kernel not in CHEAP:
        pytest.skip(f"no {kernel} kernel in this torch")
    quantized = copy.deepcopy(model)
    assert quantize_int8(quantized, kernel) == kernel
    linears = [m for m in quantized.modules() if isinstance(m, torch.nn.Linear)]
    assert not linears and isinstance(quantized.lm_head, Int8Linear)
    assert torch.equal(quantized.transformer.wte.weight, model.transformer.wte.weight)  # untied
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9, 1]])
    with torch.no_grad():
        before, after = model(ids), quantized(ids)
    assert F.cosine_similarity(before.flatten(), after.flatten(), dim=0) > 0.999
    prompt = [10, 11, 12]
    assert generate(quantized, prompt, 20, temperature=0) == reference_greedy(quantized, prompt, 20)
    assert generate(quantized, prompt, 20, temperature=0) == generate(
        model, prompt, 20, temperature=0
    )  # a model that has learned its sequences is not moved off them


@pytest.mark.slow
def test_the_commands_and_seqgen_load_take_quantize(text_ckpt, corpus_file, tmp_path, capsys):
    with pytest.raises(ValueError, match="quantize must be one of none, int8, got 'int4'"):
        seqgen.load(text_ckpt, quantize="int4")
    generator = seqgen.load(text_ckpt, quantize="int8")
    assert generator.int8_kernel in KERNELS
    assert isinstance(generator.model.lm_head, Int8Linear)
    assert seqgen.load(text_ckpt).int8_kernel is None
    argv = ["generate", "--ckpt", str(text_ckpt), "--prompt", "the", "--max_new_tokens", "8"]
    assert main([*argv, "--temperature", "0", "--quantize", "int8"]) == 0
    assert capsys.readouterr().out.strip()
    assert main([*argv, "--quantize", "int4"]) == 2
    assert "quantize" in capsys.readouterr().err
    reports = {}
    for quantize in ("none", "int8"):
        report = tmp_path / f"{quantize}.json"
        evaluate = ["evaluate", "--ckpt", str(text_ckpt), "--data", str(corpus_file)]
        assert main([*evaluate, "--quantize", quantize, "--report", str(report)]) == 0
        reports[quantize] = json.loads(report.read_text())["bits_per_byte"]
    assert reports["int8"] == pytest.approx(reports["none"], rel=0.01)


def test_a_kernel_that_computes_wrong_products_is_never_used(model, monkeypatch, caplog):
    from seqgen import quantize

    def broken(x, weight, scale):  # as PyTorch's int8 kernel did in bf16 at some widths
        return torch.full((x.shape[0], weight.shape[0]), float("nan"), dtype=x.dtype)

    found = {"broken": broken, "dequantized": EAGER["dequantized"]}
    monkeypatch.setattr(quantize, "candidate_kernels", lambda *args, **kwargs: dict(found))
    assert quantize_int8(copy.deepcopy(model)) == "dequantized"
    assert "the broken kernel computes wrong products here: not used" in caplog.text
    with pytest.raises(ValueError, match="the broken kernel computes wrong products here"):
        quantize_int8(copy.deepcopy(model), "broken")


def test_pytorch_int8_kernel_is_not_run_in_bf16_at_widths_it_reads_past():
    if "int8pack" not in EAGER:
        pytest.skip("no int8pack kernel in this torch")
    from seqgen.quantize import computes_the_product

    def layer(n_in):
        return Int8Linear(linear(n_in).weight, None, EAGER["int8pack"])

    for n_in in (24, 40, 150):  # wrong sums, NaN or a crash on an AMD Zen 4 (torch 2.13)
        assert not computes_the_product(EAGER["int8pack"], [layer(n_in)], torch.bfloat16)
    assert computes_the_product(EAGER["int8pack"], [layer(48), layer(64)], torch.bfloat16)
    assert computes_the_product(EAGER["int8pack"], [layer(150)], torch.float32)


def test_the_integer_kernel_is_as_exact_as_fp32_and_never_overflows():
    """It turns activations into integers (29 bits of a row's largest value) and sums in
    32-bit blocks: rows with outliers lose no more than an fp32 product does, and the largest
    sums possible (every weight 127, every value alike, long rows) come out right."""
    if INTEGER is None:
        pytest.skip("no C++ compiler for the integer kernel")
    generator = torch.Generator().manual_seed(0)
    weight = torch.randint(-127, 128, (5, 768), dtype=torch.int8, generator=generator)
    outliers = torch.tensor([[300.0, 1e-3, -2e-3, 0.5] * 192])
    exact = outliers.double() @ weight.double().t()
    error = (INTEGER(outliers, weight, torch.ones(5)).double() - exact).abs().max()
    assert error <= (outliers @ weight.float().t() - exact).abs().max() + 1e-6
    for width in (511, 512, 513, 20000):
        x = torch.stack([torch.full((width,), 0.99997), torch.full((width,), -0.7)])
        x[1, 0] = -1.0  # the row's largest value is another
        largest = torch.stack([torch.full((width,), 127), torch.full((width,), -127)]).to(
            torch.int8
        )
        exact = x.double() @ largest.double().t()
        found = INTEGER(x, largest, torch.ones(2)).double()
        assert ((found - exact).abs() / exact.abs()).max() < 1e-6, width
    x = torch.randn(3, 100, generator=generator)
    x[0, 7], x[1, 50] = float("nan"), float("inf")  # they spoil their rows, as in fp32
    found = INTEGER(x, weight[:, :100].contiguous(), torch.ones(5))
    assert found[:2].isnan().all() and torch.allclose(
        found[2], x[2] @ weight[:, :100].float().t(), rtol=1e-5, atol=1e-4
    )


@pytest.mark.slow
def test_every_instruction_set_branch_of_the_integer_kernel_gives_the_same_products():
    """Each CPU compiles one branch of kernels/int8_product.cpp (VNNI, AVX-512 without VNNI,
    AVX2, plain C++), so a CI machine tests only its own: the others are built here with the
    better instruction sets' macros undefined. Integer sums are exact, so every branch must
    give the native build's products bit for bit, over widths that leave every kind of
    remainder (vectors of 64 and 32, the 512-wide blocks)."""
    if INTEGER is None:
        pytest.skip("no C++ compiler for the integer kernel")
    from seqgen.quantize import INSTRUCTION_SETS, _integer

    generator = torch.Generator().manual_seed(0)
    for width in (1, 31, 32, 63, 64, 100, 512, 513, 1100):
        weight = torch.randint(-127, 128, (7, width), dtype=torch.int8, generator=generator)
        weight[0] = 127  # the largest sums a block can hold
        x = torch.randn(3, width, generator=generator)
        x[1] *= 1e4
        x[2, 0] = -50.0  # an outlier sets its row's step
        scale = torch.rand(7, generator=generator) + 0.01
        native = _integer(x, weight, scale)
        for i in range(1, len(INSTRUCTION_SETS) + 1):
            without = INSTRUCTION_SETS[:i]
            assert torch.equal(_integer(x, weight, scale, without), native), (width, without)
    with pytest.raises(ValueError, match="__SSE__"):
        _integer(x, weight, scale, ("__SSE__",))
