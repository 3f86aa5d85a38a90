import pytest
import torch

from seqgen.errors import CheckpointError
from seqgen.interop.hf import from_hf

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=101, n_positions=32, n_embd=48, n_layer=2, n_head=4)
    return transformers.GPT2LMHeadModel(config).eval()


def max_diff(hf_model, model) -> float:
    x = torch.randint(0, 101, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return (hf_model(x).logits - model(x)).abs().max().item()


def test_logits_match_hf_model_object(hf_model):
    model = from_hf(hf_model)
    assert model.config.n_layer == 2 and model.config.block_size == 32
    assert max_diff(hf_model, model) < 1e-4


def test_logits_match_saved_folder(hf_model, tmp_path):
    hf_model.save_pretrained(tmp_path / "gpt2-mini")
    assert max_diff(hf_model, from_hf(tmp_path / "gpt2-mini")) < 1e-4


def test_folder_without_transformer_prefix(hf_model, tmp_path):
    from safetensors.torch import save_file

    folder = tmp_path / "bare"
    folder.mkdir()
    hf_model.config.to_json_file(folder / "config.json")
    bare = {
        k.removeprefix("transformer."): v.contiguous()
        for k, v in hf_model.state_dict().items()
        if k != "lm_head.weight"
    }
    # older HF checkpoints also carry the causal-mask buffers; they must be skipped
    bare["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 32, 32))
    bare["h.0.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(bare, str(folder / "model.safetensors"))
    assert max_diff(hf_model, from_hf(folder)) < 1e-4


def test_bad_folder_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        from_hf(tmp_path)
    (tmp_path / "config.json").write_text('{"n_layer": 1, "n_head": 2, "n_embd": 8}')
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        from_hf(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        from_hf(tmp_path)


def test_export_round_trip(hf_model):
    from seqgen.interop.hf import hf_config, to_hf_state_dict

    model = from_hf(hf_model)
    exported = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_config(model.config)))
    missing, unexpected = exported.load_state_dict(to_hf_state_dict(model), strict=False)
    assert not unexpected and all(k.endswith((".attn.bias", ".attn.masked_bias")) for k in missing)
    assert max_diff(exported.eval(), model) < 1e-4


def test_exact_gelu_models_import_and_export_as_such():
    from dataclasses import replace

    from seqgen.interop.hf import hf_config, to_hf_state_dict
    from seqgen.model import GPT

    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=101, n_positions=32, n_embd=48, n_layer=2, n_head=4, activation_function="gelu"
    )
    hf_exact = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # GELU inputs of order 1, where the tanh approximation is off
        for block in hf_exact.transformer.h:
            block.mlp.c_fc.weight *= 40
            block.mlp.c_proj.weight *= 40
    model = from_hf(hf_exact)
    assert model.config.activation == "gelu"
    tanh = GPT(replace(model.config, activation="gelu_tanh")).eval()
    tanh.load_state_dict(model.state_dict())
    assert max_diff(hf_exact, model) < max_diff(hf_exact, tanh) / 100
    exported_config = hf_config(model.config)
    assert exported_config["activation_function"] == "gelu"
    exported = transformers.GPT2LMHeadModel(transformers.GPT2Config(**exported_config)).eval()
    exported.load_state_dict(to_hf_state_dict(model), strict=False)
    assert max_diff(exported, model) == pytest.approx(0, abs=1e-3)


def test_an_unknown_activation_is_named():
    config = transformers.GPT2Config(
        vocab_size=11, n_positions=8, n_embd=8, n_layer=1, n_head=2, activation_function="relu"
    )
    with pytest.raises(CheckpointError, match="activation_function 'relu' is not one of"):
        from_hf(transformers.GPT2LMHeadModel(config))
