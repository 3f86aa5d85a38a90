"""Every recipe in configs/ parses (unknown keys fail) and runs a few steps with tiny overrides,
its data pointed at a small fixture of its task."""

import json
from pathlib import Path

import pytest
import yaml
from helpers import TINY_MODEL, flags, make_pairs, write_parallel, write_song

from seqgen.cli import main, parse_run

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPES = sorted(CONFIGS.rglob("*.yaml"))
SHRINK = flags(
    {
        **TINY_MODEL,
        "train.max_steps": 3,
        "train.batch_size": 4,
        "train.progress_bar": "false",
        "train.max_time": "null",  # the 3 steps end the run, whatever the machine's load
        "train.compile": "false",  # compiling takes ~30 s on a CPU: tests/test_cli.py, slow tier
    }
)


def text_data(tmp_path, corpus_file):
    return ["--data.source", str(corpus_file)]


def translation_data(tmp_path, corpus_file):
    train = write_parallel(tmp_path / "pairs", "train", make_pairs(40))
    val = write_parallel(tmp_path / "pairs", "val", make_pairs(8, seed=1))
    return ["--data.train", str(train), "--data.val", str(val)]


def summarization_data(tmp_path, corpus_file):
    rows = [
        {
            "id": str(i),
            "title": "t",
            "body": f"the king rides {i}\nthe queen sings",
            "lead": f"a king {i}",
        }
        for i in range(12)
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return ["--data.train", str(path), "--data.val", str(path)]


def music_data(tmp_path, corpus_file):
    for k in range(3):
        write_song(tmp_path / "midi" / f"{k}.mid", shift=k, notes=24)
    write_song(tmp_path / "held_out.mid", shift=5, notes=24)
    return ["--data.train", str(tmp_path / "midi"), "--data.val", str(tmp_path / "held_out.mid")]


# a recipe without `task:` pretrains a language model; a task's recipe with `init_from`
# fine-tunes (the smoke test starts from scratch instead), one without pretrains the task
DATA = {
    "text": text_data,
    "translation": translation_data,
    "summarization": summarization_data,
    "music": music_data,
}


def test_recipes_exist():
    assert RECIPES, f"no recipes under {CONFIGS}"


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_recipe_parses_and_smoke_runs(recipe, corpus_file, tmp_path):
    values = yaml.safe_load(recipe.read_text()) or {}
    task = values.get("task", "text")
    assert task in DATA, f"{recipe}: no fixture data for task {task!r} in this test"
    command = "finetune" if "init_from" in values else "pretrain"
    data = DATA[task](tmp_path, corpus_file)
    if command == "finetune":
        data += ["--init_from", "none"]
    full, _ = parse_run(command, ["--config", str(recipe), *data])
    assert full.task == task and full.init_from == "none"
    assert full.model.n_embd % full.model.n_head == 0
    report = tmp_path / "report.json"
    argv = [
        command,
        "--config",
        str(recipe),
        *data,
        *SHRINK,
        "--out_dir",
        str(tmp_path / "run"),
        "--report",
        str(report),
    ]
    assert main(argv) == 0
    assert json.loads(report.read_text())["steps"] == 3
