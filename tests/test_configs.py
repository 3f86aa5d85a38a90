"""Every recipe in configs/ parses (unknown keys fail) and runs a few steps with tiny overrides."""

import json
from pathlib import Path

import pytest
from helpers import TINY_MODEL, flags

from seqgen.cli import load_config, main
from seqgen.pretrain import PretrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
WORKFLOWS = {"text_lm": ("pretrain", PretrainConfig)}
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


def test_recipes_exist():
    assert RECIPES, f"no recipes under {CONFIGS}"


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_recipe_parses_and_smoke_runs(recipe, corpus_file, tmp_path):
    folder = recipe.relative_to(CONFIGS).parts[0]
    assert folder in WORKFLOWS, f"{recipe}: no workflow registered for configs/{folder}/"
    command, config_class = WORKFLOWS[folder]
    full = load_config(config_class, ["--config", str(recipe), "--data.source", str(corpus_file)])
    assert full.model.n_embd % full.model.n_head == 0
    report = tmp_path / "report.json"
    argv = [command, "--config", str(recipe), "--data.source", str(corpus_file), *SHRINK,
            "--out_dir", str(tmp_path / "run"), "--report", str(report)]  # fmt: skip
    assert main(argv) == 0
    assert json.loads(report.read_text())["steps"] == 3
