"""The shape of the code: every task satisfies the contract, the packages import without
cycles, the core never imports the tasks, the tasks install as `seqgen_tasks` only, and a
broken third-party package breaks nothing but itself."""

import ast
import dataclasses
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

import seqgen
from seqgen.commands.generate import GenerateConfig
from seqgen.errors import CheckpointError, ConfigError
from seqgen.generation.decoding import GenerationOptions
from seqgen.registry import available_tasks, data_builders, task_class
from seqgen.tasks import (
    BuildsDatasets,
    DatasetBuilder,
    Evaluates,
    GeneratesFiles,
    HasMBR,
    Task,
    known_options,
)

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"seqgen": ROOT / "seqgen", "seqgen_tasks": ROOT / "tasks"}
FIXTURES = Path(__file__).parent / "fixtures" / "checkpoints_v1"


@pytest.mark.parametrize("name", ["text", "translation", "summarization", "music"])
def test_every_task_satisfies_the_contract(name):
    cls = task_class(name)
    assert issubclass(cls, Task) and not inspect.isabstract(cls) and cls.name == name
    assert dataclasses.is_dataclass(cls.data_config)
    fields = {f.name for f in dataclasses.fields(cls.data_config)}
    assert set(cls.stored_options) <= fields and set(cls.option_defaults) <= fields
    task = cls(block_size=64)  # every data option has a default
    assert all(isinstance(token, str) and token for token in task.special_tokens())
    restored = cls.from_options(task.options(), block_size=64)
    assert restored.options() == task.options() and restored.block_size == 64
    for capability in (Evaluates, HasMBR, BuildsDatasets, GeneratesFiles):
        if issubclass(cls, capability):
            assert not inspect.isabstract(cls)
    assert issubclass(cls, Evaluates)  # all four of seqgen's tasks have an evaluation
    assert dataclasses.is_dataclass(cls.eval_config)
    assert known_options(cls.eval_config, task.generation_defaults()) == (
        task.generation_defaults() if issubclass(cls.eval_config, GenerationOptions) else {}
    )
    if issubclass(cls, GeneratesFiles):  # its flags join seqgen generate's, none twice
        own = {f.name for f in dataclasses.fields(cls.generate_options)}
        assert not own & {f.name for f in dataclasses.fields(GenerateConfig)}
    for builder in getattr(cls, "data_builders", {}).values():
        assert isinstance(builder, DatasetBuilder) and dataclasses.is_dataclass(builder.config)


def test_a_task_refuses_data_options_of_another_task():
    with pytest.raises(ConfigError, match="TranslationData"):
        task_class("translation")(task_class("text").data_config())


def module_name(path: Path) -> str:
    """The dotted name of a module file or package folder of this repository."""
    for package, folder in PACKAGES.items():
        if path == folder:
            return package
        if folder in path.parents:
            parts = path.relative_to(folder).with_suffix("").parts
            return ".".join((package, *(p for p in parts if p != "__init__")))
    raise AssertionError(path)


def imports_of(path: Path) -> set[str]:
    """Modules of this repository that `path` imports anywhere (not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(node)
        for stmt in ast.walk(tree)
        if isinstance(stmt, ast.If) and ast.unparse(stmt.test) == "TYPE_CHECKING"
        for node in ast.walk(stmt)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] in PACKAGES}


def import_graph() -> dict[str, set[str]]:
    files = [p for folder in PACKAGES.values() for p in folder.rglob("*.py")]
    modules = {module_name(p): p for p in files}
    return {
        name: {m for m in imports_of(path) if m in modules and m != name}
        for name, path in modules.items()
    }


def test_no_import_cycles_and_the_core_never_imports_tasks():
    graph = import_graph()
    assert "seqgen.training.workflow" in graph and "seqgen_tasks.music.task" in graph
    for module, targets in graph.items():
        if module.startswith("seqgen."):
            assert not any(t.startswith("seqgen_tasks") for t in targets), module
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            assert state.get(target) != "open", "import cycle: " + " -> ".join(path + [target])
            if target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_tasks_install_as_seqgen_tasks_and_no_top_level_tasks(tmp_path):
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {module_name(p.parent) for p in ROOT.glob("tasks/**/__init__.py")}
    folders |= {module_name(p.parent) for p in ROOT.glob("seqgen/**/__init__.py")}
    assert set(config["packages"]) == folders  # every package folder is installed
    assert config["package-dir"] == {"seqgen_tasks": "tasks"}
    probe = (
        "import importlib.util, seqgen_tasks; "
        "print(importlib.util.find_spec('tasks'), seqgen_tasks.__path__[0])"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["None", str(ROOT / "tasks")]
    assert set(available_tasks()) >= {"text", "translation", "summarization", "music"}


def test_inference_does_not_import_lightning(tmp_path):
    """Loading, generating and every task's adapter work without Lightning, whose import
    costs seconds at each `seqgen generate` / `evaluate` / `serve`."""
    probe = (
        "import sys, seqgen, seqgen.inference, seqgen.cli, seqgen.commands.generate; "
        "import seqgen.evaluation; "
        "from seqgen.registry import task_class; "
        "[task_class(name) for name in ('text', 'translation', 'summarization', 'music')]; "
        "found = sorted(m for m in sys.modules if 'lightning' in m); "
        "open('modules.txt', 'w').write(repr(found))"
    )
    # The result goes to a file: pyfluidsynth, which pretty_midi imports, prints where it found
    # its library on stdout whenever the CI variable is set.
    subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, check=True)
    assert (tmp_path / "modules.txt").read_text() == "[]"


def test_version():
    version = subprocess.run(
        [sys.executable, "-m", "seqgen.cli", "--version"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert version.strip() == f"seqgen {seqgen.__version__}"


@pytest.fixture
def broken_package(tmp_path, monkeypatch):
    """An installed third-party package whose task and tokenizer kind fail to import."""
    (tmp_path / "broken_task.py").write_text("raise ImportError('a missing dependency')\n")
    info = tmp_path / "broken_task-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-task\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[seqgen.tasks]\nbroken = broken_task:BrokenTask\n\n"
        "[seqgen.tokenizers]\nbroken = broken_task:Tok\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_a_broken_third_party_task_breaks_only_itself(broken_package, tmp_path, caplog):
    assert "broken" in available_tasks()
    for name in ("text", "translation", "music"):  # every other checkpoint still loads
        assert seqgen.load(FIXTURES / name).task.name == name
    with pytest.raises(ConfigError, match="task 'broken' .*failed to load: ImportError"):
        task_class("broken")
    assert "wikisum" in data_builders()  # `seqgen data` still finds the others
    assert "task 'broken'" in caplog.text
    bad = tmp_path / "ck"
    bad.mkdir()
    (bad / "tokenizer.json").write_text('{"kind": "broken"}')
    with pytest.raises(CheckpointError, match="tokenizer kind 'broken' .*failed to load"):
        seqgen.load_tokenizer(bad)
    (bad / "tokenizer.json").write_text('{"kind": "nope"}')
    with pytest.raises(CheckpointError, match="unknown tokenizer kind 'nope'"):
        seqgen.load_tokenizer(bad)
