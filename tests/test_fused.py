"""seqgen.fused: a block's one-row decoding step as two compiled calls."""

import copy

import pytest
import torch

from seqgen import cpu, fused, quantize
from seqgen.config import ModelConfig
from seqgen.generation.cache import KVCache
from seqgen.generation.engine import generate
from seqgen.model import GPT, Block
from seqgen.timing import TIMED_CALLS

COMPILED = ("compiled", "compiled", "packed")


def small_gpt(**changes) -> GPT:
    torch.manual_seed(0)
    config = dict(vocab_size=40, block_size=48, n_layer=2, n_head=2, n_embd=32) | changes
    return GPT(ModelConfig(**config)).eval()


def fused_calls(monkeypatch) -> list[str]:
    """The names of the compiled functions called from now on (and still run)."""
    called = []
    for name in ("ATTENTION_INPUTS", "BLOCK_REST"):
        compiled = getattr(fused, name)
        spy = lambda *a, c=compiled, n=name, **k: called.append(n) or c(*a, **k)  # noqa: E731
        monkeypatch.setattr(fused, name, spy)
    return called


def test_blocks_keep_their_modules_names_and_mode():
    model = small_gpt(dropout=0.1)
    names = [name for name, _ in model.named_modules()]
    fused.fuse_blocks(model)
    assert all(type(block) is fused.FusedBlock for block in model.transformer.h)
    assert isinstance(model.transformer.h[0], Block)
    assert [name for name, _ in model.named_modules()] == names
    assert not any(module.training for module in model.modules())
    relative = small_gpt(pos_embedding="relative")
    fused.fuse_blocks(relative)  # relative attention runs as written
    assert all(type(block) is Block for block in relative.transformer.h)


def test_every_other_step_runs_the_block_as_written(monkeypatch):
    """A prompt, several rows, a mask, no cache, training or gradients: Block.forward, the
    same numbers (nothing compiled is called)."""
    model = small_gpt()
    plain = copy.deepcopy(model)
    fused.fuse_blocks(model)
    called = fused_calls(monkeypatch)
    ids = torch.randint(0, 40, (3, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(ids), plain(ids))
        for m in (model, plain):  # three rows a step
            cache = KVCache(m.config, 3, 12, torch.device("cpu"), torch.float32)
            m(ids[:, :8], cache=cache)
            m.last = m(ids[:, 8:], cache=cache)
        assert torch.equal(model.last, plain.last)
    for training in (True, False):  # one row a step, but training or with gradients
        model.train(training)
        cache = KVCache(model.config, 1, 12, torch.device("cpu"), torch.float32)
        model(ids[:1, :1], cache=cache)
        model(ids[:1, 1:2], cache=cache)
    assert called == []


@pytest.mark.slow
@pytest.mark.parametrize(
    "dtype, changes",
    [
        (torch.float32, {}),
        (torch.float32, {"bias": False, "activation": "gelu", "n_head": 4}),
        (torch.bfloat16, {}),
        ("int8", {}),
    ],
)
def test_a_fused_step_gives_the_blocks_logits(dtype, changes, monkeypatch):
    """Decoding a token at a time over caches of different lengths, the fused blocks give the
    logits of the model as written, with and without biases, with either GELU and other head
    shapes, with int8 weights, and the compiled calls are made. fp32: within float error.
    bf16 rounds where the model does: against the same weights in fp32, it errs no more than
    the model itself."""
    if not cpu.packing_available(small_gpt()) or not cpu.compiled_available("cpu"):
        pytest.skip("no packed linear or no C++ compiler for TorchInductor here")
    model = small_gpt(**changes).to(torch.bfloat16 if dtype == torch.bfloat16 else None)
    fast = copy.deepcopy(model)
    if dtype == "int8":  # the model as written multiplies by the weights converted back
        quantize.quantize_int8(model, "dequantized")
        quantize.quantize_int8(fast, "dequantized")
        assert fused.fuse_blocks(fast)
        dtype = torch.float32
    else:
        cpu.fast_linears(fast, COMPILED)
    assert type(fast.transformer.h[0]) is fused.FusedBlock
    reference = copy.deepcopy(model).float()
    called = fused_calls(monkeypatch)
    ids = torch.randint(0, 40, (1, 40), generator=torch.Generator().manual_seed(2))
    head_size = model.config.n_embd // model.config.n_head
    kv_dtype = cpu.cache_dtype(dtype, torch.device("cpu"), model.config.n_head, head_size)
    errors = {"model": [], "fused": []}
    for prompt, slots in ((3, 20), (17, 40)):  # other key counts and buffer lengths
        models = {"reference": reference, "model": model, "fused": fast}
        caches = {
            name: KVCache(model.config, 1, slots, torch.device("cpu"), kv_dtype) for name in models
        }
        with torch.inference_mode():
            for name, m in models.items():
                m(ids[:, :prompt], cache=caches[name])
            for t in range(prompt, slots):
                logits = {
                    name: m(ids[:, t : t + 1], cache=caches[name]).float()
                    for name, m in models.items()
                }
                if dtype == torch.float32:
                    spread = logits["model"].std()
                    assert (logits["fused"] - logits["model"]).abs().max() < 1e-4 * spread, t
                for name in errors:
                    errors[name].append((logits[name] - logits["reference"]).abs().max())
        # the keys and values the fused steps wrote are the model's
        assert torch.allclose(caches["fused"].k.float(), caches["model"].k.float(), atol=0.05)
    if dtype == torch.bfloat16:
        assert max(errors["fused"]) <= 2 * max(errors["model"])
    steps = (20 - 3 + 40 - 17) * model.config.n_layer
    assert called.count("ATTENTION_INPUTS") == called.count("BLOCK_REST") == steps


@pytest.mark.slow
def test_one_build_serves_models_of_other_widths():
    """The compiled functions are built once per kind of input (dtypes, heads, head size,
    ...): models of other widths and head sizes decode right after another model built them
    (the softmax's scale once came from the first model's traced head size)."""
    if not cpu.packing_available(small_gpt()) or not cpu.compiled_available("cpu"):
        pytest.skip("no packed linear or no C++ compiler for TorchInductor here")
    ids = torch.randint(0, 40, (1, 12), generator=torch.Generator().manual_seed(3))
    for changes in ({"n_embd": 64}, {}, {"n_embd": 64, "n_head": 4}, {"n_embd": 48}):
        model = small_gpt(**changes)
        fast = copy.deepcopy(model)
        cpu.fast_linears(fast, COMPILED)
        caches = [KVCache(model.config, 1, 12, torch.device("cpu"), torch.float32) for _ in "ab"]
        with torch.inference_mode():
            for m, cache in zip((model, fast), caches, strict=True):
                m(ids[:, :4], cache=cache)
            for t in range(4, 12):
                expected, found = (
                    m(ids[:, t : t + 1], cache=c)
                    for m, c in zip((model, fast), caches, strict=True)
                )
                assert (found - expected).abs().max() < 1e-4 * expected.std(), (changes, t)


@pytest.mark.slow
def test_fused_blocks_decode_as_the_model_does(model):
    """The trained test model, fp32: greedy decoding, a beam search and samples give the ids
    of the model as written (the fused step runs for the single rows)."""
    if not cpu.packing_available(model) or not cpu.compiled_available("cpu"):
        pytest.skip("no packed linear or no C++ compiler for TorchInductor here")
    fast = copy.deepcopy(model)
    cpu.fast_linears(fast, COMPILED)
    for prompts, options in (
        ([3, 4, 5], {"temperature": 0}),
        ([3, 4, 5], {"temperature": 0.9, "seed": 4}),
        ([[3, 4, 5], [7]], {"num_beams": 2}),
    ):
        assert generate(fast, prompts, 10, **options) == generate(model, prompts, 10, **options)


def test_timed_fusion_keeps_the_faster_step(monkeypatch):
    """Timed, the blocks are fused only where a one-row step runs faster so; blocks are fused
    once; int8 weights of a kernel named stay on it."""
    for faster in (True, False):
        model = small_gpt()
        monkeypatch.setattr(fused, "_fused_step_faster", lambda *args, f=faster: f)
        assert fused.fuse_blocks(model, timed=True) is faster
        kinds = {type(block) for block in model.transformer.h}
        assert kinds == {fused.FusedBlock if faster else Block}
    assert fused.fuse_blocks(model) and not fused.fuse_blocks(model)
    # fused once: the blocks stay FusedBlocks of the model's own modules, not nested
    assert {type(block) for block in model.transformer.h} == {fused.FusedBlock}
    assert [name for name, _ in model.named_modules()] == [
        name for name, _ in small_gpt().named_modules()
    ]
    int8 = small_gpt()
    quantize.quantize_int8(int8, "dequantized")
    assert all(type(block) is Block for block in int8.transformer.h)


@pytest.mark.slow
def test_the_timing_runs_both_steps_and_restores_the_blocks(monkeypatch):
    if not cpu.compiled_available("cpu"):
        pytest.skip("no C++ compiler for TorchInductor here")
    model = small_gpt()
    called = fused_calls(monkeypatch)
    written = list(model.transformer.h)
    faster = fused._fused_step_faster(model, written, [fused.FusedBlock(b) for b in written])
    assert isinstance(faster, bool) and list(model.transformer.h) == written
    assert called.count("BLOCK_REST") >= TIMED_CALLS * model.config.n_layer
    fused_now = fused.fuse_blocks(model, timed=True)  # the model's own blocks, as timed
    assert {type(block) for block in model.transformer.h} == {
        fused.FusedBlock if fused_now else Block
    }
