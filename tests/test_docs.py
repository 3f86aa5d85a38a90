"""The README and docs/: every relative link resolves (anchors included), every recipe they
name exists, the README stays a front door; the release files are there and the package
builds as a wheel and an sdist that hold what it needs."""

import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import seqgen

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code is not headings
    return {slug(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return [a or b for a, b in LINK.findall(text)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for link in links(page):
        if re.match(r"[a-z]+:", link):  # https:, mailto:
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(f"{link}: no heading #{anchor} in {target.name}")
    assert not broken, f"{page.name}: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_recipe_named_exists(page):
    named = set(re.findall(r"configs/[\w/]+\.yaml", page.read_text()))
    assert [n for n in sorted(named) if not (ROOT / n).is_file()] == []


def test_the_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    assert not re.search(r"\bissues? #?\d", text, flags=re.I)
    for page in ROOT.glob("docs/*.md"):
        assert not re.search(r"\bissues? #?\d", page.read_text(), flags=re.I), page.name
    # every workflow links to its page
    for page in ("data", "training", "generation", "translation", "summarization", "music"):
        assert f"(docs/{page}.md)" in text, page


def test_a_release_has_its_licence_changelog_and_version():
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    version = tuple(int(part) for part in seqgen.__version__.split("."))
    assert version >= (0, 2, 0)
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## [{seqgen.__version__}] - " in changelog and "## [Unreleased]" in changelog


@pytest.mark.slow
def test_the_package_builds_as_a_wheel_and_an_sdist(tmp_path):
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    source = tmp_path / "src"
    for name in listed:  # the tree as a clean clone has it (no build outputs, no runs/)
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp_path / "dist")],
        cwd=source,
        check=True,
        capture_output=True,
    )
    version = seqgen.__version__
    (wheel,) = (tmp_path / "dist").glob(f"seqgen-{version}-py3-none-any.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "seqgen/model.py",
        "seqgen/assets/serve.html",
        "seqgen/assets/shakespeare_sample.txt",
        "seqgen/kernels/int8_product.cpp",  # built at load by --quantize int8
        "seqgen_tasks/music/pins/pop909.json",
        "seqgen_tasks/music/pins/asap.json",
        f"seqgen-{version}.dist-info/licenses/LICENSE",
    ):
        assert needed in names, needed
    info = zipfile.ZipFile(wheel).read(f"seqgen-{version}.dist-info/entry_points.txt").decode()
    assert (
        "music = seqgen_tasks.music.task:MusicTask" in info and "seqgen = seqgen.cli:main" in info
    )
    (sdist,) = (tmp_path / "dist").glob(f"seqgen-{version}.tar.gz")
    with tarfile.open(sdist) as tar:
        members = {m.split("/", 1)[1] for m in tar.getnames() if "/" in m}
    assert {
        "LICENSE",
        "README.md",
        "pyproject.toml",
        "tasks/music/pins/asap.json",
        "seqgen/kernels/int8_product.cpp",
    } <= members


@pytest.mark.slow
@pytest.mark.skipif(
    not (ROOT / ".venv" / ".base-stamp").is_file(), reason="make demo's .venv is not set up"
)
def test_the_readme_quickstart_runs(tmp_path):
    """The Quickstart's `make demo`, with its training cut to a few steps."""
    quickstart = (ROOT / "README.md").read_text().split("## Quickstart", 1)[1].split("\n## ")[0]
    (command,) = re.findall(r"^(make \w+)", quickstart, flags=re.M)
    assert command == "make demo"
    shortened = [
        "DEMO_ARGS=--train.max_steps 20 --train.max_time null",
        f"DEMO_DIR={tmp_path}/demo",
    ]
    done = subprocess.run(
        [*command.split(), *shortened], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    samples = done.stdout.split("--- sample: ")[1:]
    assert [s.splitlines()[0] for s in samples] == ["ROMEO:", "First Citizen:", "KING HENRY:"]
    assert all(len(s.strip().splitlines()) > 1 for s in samples)  # each prompt was continued
    assert (tmp_path / "demo" / "final" / "model.safetensors").is_file()
