"""Every recipe in configs/ parses (unknown keys fail) and runs a few steps with tiny overrides,
its data pointed at a small fixture."""

import json
from pathlib import Path

import pytest
from helpers import TINY_MODEL, flags, make_pairs, write_parallel

from seqgen.cli import load_config, main, parse_finetune
from seqgen.pretrain import PretrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPES = sorted(CONFIGS.rglob("*.yaml"))
SHRINK = flags(
    {
        **TINY_MODEL,
        "train.max_steps": 3,
        "train.batch_size": 4,
        "train.progress_bar": "false",
        "train.max_time": "00:01:00",
    }
)


def text_data(tmp_path, corpus_file):
    return ["--data.source", str(corpus_file)]


def translation_data(tmp_path, corpus_file):
    train = write_parallel(tmp_path / "pairs", "train", make_pairs(40))
    val = write_parallel(tmp_path / "pairs", "val", make_pairs(8, seed=1))
    # a recipe may start from a pretrained run; the smoke test starts from scratch
    return ["--data.train", str(train), "--data.val", str(val), "--from", "none"]


# configs/<folder>/ -> (command, fixture data flags)
WORKFLOWS = {"text_lm": ("pretrain", text_data), "translation": ("finetune", translation_data)}


def test_recipes_exist():
    assert RECIPES, f"no recipes under {CONFIGS}"


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_recipe_parses_and_smoke_runs(recipe, corpus_file, tmp_path):
    folder = recipe.relative_to(CONFIGS).parts[0]
    assert folder in WORKFLOWS, f"{recipe}: no workflow registered for configs/{folder}/"
    command, data_flags = WORKFLOWS[folder]
    data = data_flags(tmp_path, corpus_file)
    if command == "pretrain":
        full = load_config(PretrainConfig, ["--config", str(recipe), *data])
    else:
        _, full, _ = parse_finetune(["--config", str(recipe), *data])
    assert full.model.n_embd % full.model.n_head == 0
    report = tmp_path / "report.json"
    argv = [command, "--config", str(recipe), *data, *SHRINK,
            "--out_dir", str(tmp_path / "run"), "--report", str(report)]  # fmt: skip
    assert main(argv) == 0
    assert json.loads(report.read_text())["steps"] == 3
