"""Checkpoints written by an earlier release still load and compute what they did, and the
README's Python example runs as written."""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

import seqgen
from seqgen import checkpoint

FIXTURES = Path(__file__).parent / "fixtures" / "checkpoints_v1"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_format_1_checkpoints_load_and_compute_the_same(name):
    assert checkpoint.read_meta(FIXTURES / name)["format_version"] == 1
    expected = EXPECTED[name]
    generator = seqgen.load(FIXTURES / name, pack=False)
    assert generator.task.name == name
    ids = generator.prompt_ids(expected["prompt"])
    assert ids == expected["prompt_ids"]
    with torch.no_grad():
        logits = generator.model(torch.tensor([ids]))[0, -1]
    assert torch.allclose(logits, torch.tensor(expected["last_logits"]), atol=1e-4)


def test_format_1_translation_keeps_its_target_language():
    generator = seqgen.load(FIXTURES / "translation")
    assert generator.task.data.target_lang == "de"
    assert generator.task.options() == {"source_lang": "en", "target_lang": "de"}
    assert isinstance(generator.generate("The king rides.", max_new_tokens=5), str)


def readme_python_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    found = [b for b in blocks if 'seqgen.load("runs/shakespeare")' in b]
    assert len(found) == 1, "the README's Generate section has one Python example"
    return found[0]


def test_the_readme_python_example_runs_as_written(tmp_path, monkeypatch, capsys):
    shutil.copytree(FIXTURES / "text", tmp_path / "runs" / "shakespeare")
    monkeypatch.chdir(tmp_path)
    import seqgen.generation.engine  # noqa: F401  (the submodule must not shadow seqgen.generate)
    import seqgen.inference  # noqa: F401

    namespace: dict = {}
    exec(compile(readme_python_example(), str(README), "exec"), namespace)
    assert callable(seqgen.generate) and callable(seqgen.stream)
    ids = namespace["ids"]
    assert len(ids) == 2 and all(isinstance(i, int) for row in ids for i in row)
    assert all(len(row) <= 50 for row in ids)
    assert capsys.readouterr().out  # the streamed text
