import json
import pickle

import pytest
import torch
from safetensors.torch import load_file

from seqgen import checkpoint as ckpt
from seqgen.config import ModelConfig
from seqgen.errors import CheckpointError
from seqgen.model import GPT
from seqgen.training.trainer import SeqgenCheckpointIO


@pytest.fixture
def saved(tmp_path, sp_tokenizer):
    torch.manual_seed(0)
    model = GPT(
        ModelConfig(
            vocab_size=sp_tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16
        )
    )
    return ckpt.save_model(tmp_path / "run" / "final", model, sp_tokenizer, "text"), model


def test_round_trip_is_exact_and_self_contained(saved):
    path, model = saved
    assert sorted(p.name for p in path.iterdir()) == [
        "config.json",
        "model.safetensors",
        "seqgen_tokenizer.json",
        "tokenizer.model",
    ]
    weights = load_file(str(path / "model.safetensors"))
    assert "lm_head.weight" not in weights and "transformer.wte.weight" in weights  # tied: once
    assert "transformer.h.0.attn.c_attn.weight" in weights  # GPT-2 names
    loaded = ckpt.load(path.parent)  # a run directory resolves to its final/
    assert loaded.path == path and loaded.task == "text"
    assert loaded.model.lm_head.weight is loaded.model.transformer.wte.weight
    x = torch.randint(0, 100, (1, 8))
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model.eval()(x))
    assert loaded.tokenizer.encode("the king") == ckpt.load_tokenizer(path).encode("the king")


def test_task_mismatch(saved):
    with pytest.raises(CheckpointError, match="trained for task 'text', not 'music'"):
        ckpt.load(saved[0], task="music")


def test_missing_and_corrupt_files(saved, tmp_path):
    path, _ = saved
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        ckpt.load(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="not a seqgen checkpoint"):
        ckpt.load(tmp_path)
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt weights"):
        ckpt.load(path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: corrupt"):
        ckpt.load(path)


def test_weights_that_do_not_fit_the_config(saved):
    path, _ = saved
    meta = json.loads((path / "config.json").read_text())
    meta["model"]["n_embd"] = 32
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="do not fit"):
        ckpt.load(path)


def test_newer_format_is_refused(saved):
    path, _ = saved
    meta = json.loads((path / "config.json").read_text())
    meta["format_version"] = 99
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="upgrade seqgen"):
        ckpt.load(path)


class Exploit:
    def __reduce__(self):
        return (print, ("unpickled arbitrary code",))


def test_training_state_never_unpickles_objects(saved, capsys):
    path, _ = saved
    with open(path / "training_state.pt", "wb") as f:
        torch.save({"global_step": 1, "payload": Exploit()}, f, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="corrupt or unsafe"):
        SeqgenCheckpointIO(None).load_checkpoint(path)
    assert "unpickled arbitrary code" not in capsys.readouterr().out


def test_write_is_atomic_on_failure(saved, sp_tokenizer, monkeypatch):
    path, model = saved
    before = (path / "model.safetensors").read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_weights", broken)
    with pytest.raises(OSError):
        ckpt.save_model(path, model, sp_tokenizer, "text")
    assert (path / "model.safetensors").read_bytes() == before  # the old checkpoint survives


def test_latest_checkpoint_by_step(saved, sp_tokenizer):
    path, model = saved
    root = path.parent / "checkpoints"
    for step in (5, 20, 10):
        ckpt.save_model(root / f"step-{step}", model, sp_tokenizer, "text", step=step)
    assert ckpt.latest_checkpoint(root).name == "step-20"


@pytest.mark.parametrize(
    "change", [{"vocab_size": 10**12}, {"n_layer": 100_000}, {"n_embd": 2**20, "n_head": 1}]
)
def test_a_config_declaring_a_huge_model_fails_before_building_it(saved, change):
    """Compared with the weights file's header on the meta device: no memory is allocated
    (built, any of these would need terabytes)."""
    path, _ = saved
    meta = json.loads((path / "config.json").read_text())
    meta["model"].update(change)
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"do not fit the model config .* by the config"):
        ckpt.load(path)
    with pytest.raises(CheckpointError, match=r"do not fit"):
        ckpt.check_weights_fit(ckpt.ModelConfig.from_dict(meta["model"]), path)


@pytest.mark.parametrize("partial_written", [True, False])
def test_a_crash_between_the_two_renames_loses_no_checkpoint(saved, sp_tokenizer, partial_written):
    """atomic_directory renames NAME to NAME.old, then NAME.partial to NAME: a crash between
    the two leaves no NAME. The newest checkpoint is found (and pruning keeps it)."""
    path, model = saved
    root = path.parent / "checkpoints"
    for step in (5, 10):
        ckpt.save_model(root / f"step-{step}", model, sp_tokenizer, "text", step=step)
    newest = root / "step-10"
    if partial_written:  # a new version of step-10 had been written whole before the crash
        ckpt.save_model(root / "new", model, sp_tokenizer, "text", step=10, marker="new")
        (root / "new").rename(root / "step-10.partial")
    newest.rename(root / "step-10.old")
    assert ckpt.latest_checkpoint(root) == newest
    assert ckpt.read_meta(newest).get("marker") == ("new" if partial_written else None)
    ckpt.prune_checkpoints(root, keep=1)
    assert sorted(p.name for p in root.iterdir()) == ["step-10"]
