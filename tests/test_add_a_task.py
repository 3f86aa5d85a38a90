"""The "Add a task" page's example, installed as a third-party package by entry point and
run through the CLI: finetune -> generate -> evaluate, learning what the task asks."""

import json
import random
import re
import sys
from pathlib import Path

import pytest
import tomllib
from conftest import WORDS

from seqgen.cli import main

PAGE = Path(__file__).resolve().parents[1] / "docs" / "adding-a-task.md"


def readme_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", PAGE.read_text(), re.DOTALL)


@pytest.fixture
def reverse_package(tmp_path, monkeypatch):
    """The page's task module and entry point, installed as a package would be."""
    (code,), (toml,) = readme_blocks("python"), readme_blocks("toml")
    (tmp_path / "reverse_task.py").write_text(code)
    entry_points = tomllib.loads(toml)["project"]["entry-points"]
    info = tmp_path / "reverse_task-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: reverse-task\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "".join(
            f"[{group}]\n" + "".join(f"{name} = {value}\n" for name, value in names.items())
            for group, names in entry_points.items()
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("reverse_task", None)


def write_lines(path: Path, n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(WORDS[:12]) for _ in range(rng.randint(2, 3))) for _ in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return lines


def test_the_readme_task_trains_generates_and_evaluates(reverse_package, tmp_path, capsys):
    train, val, test = (tmp_path / f"{s}.txt" for s in ("train", "val", "test"))
    write_lines(train, 2000, 0), write_lines(val, 40, 1)
    lines = write_lines(test, 40, 2)
    run, report = tmp_path / "run", tmp_path / "train.json"
    assert (
        main(
            [
                "finetune",
                "--task",
                "reverse",
                "--init_from",
                "none",
                "--data.train",
                str(train),
                "--data.val",
                str(val),
                "--out_dir",
                str(run),
                "--model.n_layer",
                "2",
                "--model.n_head",
                "2",
                "--model.n_embd",
                "64",
                "--model.block_size",
                "32",
                "--tokenizer.vocab_size",
                "400",
                "--train.batch_size",
                "32",
                "--train.learning_rate",
                "3e-3",
                "--train.warmup_steps",
                "20",
                "--train.max_steps",
                "300",
                "--train.val_every_n_steps",
                "1000",
                "--train.progress_bar",
                "false",
                "--report",
                str(report),
            ]
        )
        == 0
    )
    trained = json.loads(report.read_text())
    assert trained["data_stats"]["train_truncated"] == 0 and trained["val_loss"] < 0.5
    capsys.readouterr()

    assert main(["generate", "--ckpt", str(run), "--prompt", lines[0]]) == 0
    assert capsys.readouterr().out.split() == lines[0].split()[::-1]  # greedy: its default

    scores = tmp_path / "scores.json"
    assert main(["evaluate", "--ckpt", str(run), "--data", str(test), "--report", str(scores)]) == 0
    result = json.loads(scores.read_text())
    assert result["lines"] == 40 and result["accuracy"] >= 0.9
    assert f"accuracy {result['accuracy']:.3f} on 40 lines" in capsys.readouterr().out

    with pytest.raises(SystemExit):  # its options: its own data field, the shared generation
        main(["evaluate", "--task", "reverse", "--help"])
    shown = capsys.readouterr().out
    assert "--data DATA" in shown and "Lines to reverse." in shown and "--num_beams" in shown
    assert main(["evaluate", "--ckpt", str(run), "--data", str(test), "--num_beams", "0"]) == 2
    assert "num_beams must be >= 1" in capsys.readouterr().err
