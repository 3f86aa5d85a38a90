import pytest
import torch

from seqgen.commands.info import parameter_tally
from seqgen.config import PRESETS, ModelConfig, TrainConfig, parse_duration
from seqgen.errors import ConfigError
from seqgen.model import GPT


def test_gpt2_preset_has_gpt2_parameter_count():
    model = GPT(ModelConfig.from_preset("gpt2"))
    assert model.num_params() == 124_439_808
    assert model.lm_head.weight is model.transformer.wte.weight
    tally = dict(parameter_tally(model))
    assert tally["total"] == 124_439_808
    assert tally["token embedding (wte, tied lm_head)"] == 50257 * 768
    assert tally["block 0 attention (c_attn, c_proj)"] == 768 * 2304 + 2304 + 768 * 768 + 768


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_valid(name):
    config = ModelConfig.from_preset(name)
    assert config.n_embd % config.n_head == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_embd=65, n_head=2), "divisible"),
        (dict(n_layer=0), "n_layer"),
        (dict(dropout=1.0), "dropout"),
        (dict(pos_embedding="rotary"), "pos_embedding"),
        (dict(dropout=float("nan")), "dropout must be a finite float"),  # passes range checks
        (dict(dropout=float("-inf")), "dropout must be a finite float"),
    ],
)
def test_invalid_model_config(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**kwargs)


def test_unknown_preset_and_keys():
    with pytest.raises(ConfigError, match="unknown model preset 'gpt3'"):
        ModelConfig.from_preset("gpt3")
    with pytest.raises(ConfigError, match="n_layr"):
        ModelConfig.from_dict({"n_layr": 2})


def test_train_config_validation_and_durations():
    assert parse_duration("00:00:02:00") == 120
    assert parse_duration("2:30") == 150
    assert parse_duration("45.5") == 45.5
    with pytest.raises(ConfigError, match="max_time"):
        TrainConfig(max_time="two minutes")
    with pytest.raises(ConfigError, match="max_steps is -1"):
        TrainConfig(max_steps=-1)
    with pytest.raises(ConfigError, match="batch_size"):
        TrainConfig(batch_size=0)


def tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig.from_preset("tiny", vocab_size=50, block_size=16, **overrides)).eval()


@pytest.mark.parametrize("pos", ["learned", "sinusoidal"])
def test_future_tokens_do_not_change_earlier_logits(pos):
    model = tiny(pos_embedding=pos)
    x = torch.randint(0, 50, (2, 16))
    changed = x.clone()
    changed[:, 10:] = (changed[:, 10:] + 7) % 50
    with torch.no_grad():
        a, b = model(x), model(changed)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6)
    assert not torch.allclose(a[:, 10:], b[:, 10:], atol=1e-3)


def test_shapes_options_and_context_limit():
    model = tiny(bias=False, pos_embedding="sinusoidal", dropout=0.1)
    assert "wpe" not in model.transformer
    assert all(m.bias is None for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert "sinusoids" not in model.state_dict()  # derived, never stored
    assert model(torch.zeros(3, 5, dtype=torch.long)).shape == (3, 5, 50)
    with pytest.raises(ValueError, match="exceeds block_size"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_residual_projections_use_scaled_init():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, block_size=8, n_layer=8, n_head=4, n_embd=256))
    std = model.transformer.h[0].mlp.c_proj.weight.std().item()
    assert abs(std - 0.02 / (2 * 8) ** 0.5) < 5e-4
    assert abs(model.transformer.h[0].mlp.c_fc.weight.std().item() - 0.02) < 5e-4


def test_resize_vocab_appends_rows_and_keeps_old_ids():
    model = tiny()
    x = torch.randint(0, 50, (1, 8))
    with torch.no_grad():
        before = model(x)
        old_rows = model.transformer.wte.weight.clone()
        model.resize_vocab(53)
        after = model(x)
    assert model.config.vocab_size == 53 and after.shape[-1] == 53
    assert torch.equal(model.transformer.wte.weight[:50], old_rows)
    assert torch.allclose(model.transformer.wte.weight[50], old_rows.mean(0))
    assert torch.allclose(after[..., :50], before, atol=1e-6)
    assert model.lm_head.weight is model.transformer.wte.weight
    with pytest.raises(ValueError, match="shrink"):
        model.resize_vocab(10)


def test_public_api_exports_resolve():
    import seqgen

    for name in seqgen.__all__:
        assert getattr(seqgen, name) is not None
    assert seqgen.load is seqgen.inference.load
    with pytest.raises(AttributeError):
        seqgen.nothing_here  # noqa: B018


def test_attention_maps_are_causal_distributions(model):
    x = torch.randint(0, 40, (2, 10), generator=torch.Generator().manual_seed(2))
    maps = model.attention_maps(x)
    assert len(maps) == 2 and maps[0].shape == (2, 2, 10, 10)
    for weights in maps:
        assert torch.allclose(weights.sum(-1), torch.ones(2, 2, 10))
        assert weights.triu(diagonal=1).abs().max() == 0
    # the weights the maps show are the ones attention applies
    with torch.no_grad():
        positions = torch.arange(10)
        hidden = model.transformer.wte(x) + model.transformer.wpe(positions)
        attn = model.transformer.h[0].attn
        h = model.transformer.h[0].ln_1(hidden)
        q, k, v = attn.heads(h)
        applied = attn.attend(q, k, v, None, None, 0)
        assert (attn.weights(h) @ v - applied).abs().max() < 1e-5
