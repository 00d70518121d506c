"""docs/plugins.md cannot rot: its example plugin is real files that are installed and run.

The guide shows the files of ``docs/examples/my-renderer`` verbatim: a fence after
``<!-- snippet: PATH -->`` is the whole file, one after ``<!-- excerpt: PATH -->`` a part of it
(PATH relative to the repository root). Every other Python or TOML fence of the guide is a
listing of signatures (it contains ``...``).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from autosim_core.plugins import load_registry
from autosim_core.run import open_run

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "plugins.md"
PLUGIN = ROOT / "docs" / "examples" / "my-renderer"
FENCE = re.compile(r"^(?: *<!-- (snippet|excerpt): (\S+) -->\n)?( *)```(\w*)\n(.*?)^\3```$", re.M | re.S)


def _fences() -> list[tuple[str | None, str | None, str, str]]:
    """(kind, path, language, text) of every fenced block of the guide, indentation removed."""
    out = []
    for kind, path, indent, language, body in FENCE.findall(GUIDE.read_text(encoding="utf-8")):
        lines = [line[len(indent):] if line.startswith(indent) else line.lstrip(" ")
                 for line in body.splitlines()]
        out.append((kind or None, path or None, language, "\n".join(lines) + "\n"))
    return out


def test_the_guide_shows_the_example_files_as_they_are() -> None:
    fences = _fences()
    shown = set()
    for kind, path, language, text in fences:
        if path is None:
            assert language not in ("python", "toml") or "..." in text, \
                f"docs/plugins.md: a {language} block is neither a signature listing nor a file:\n{text}"
            continue
        file = ROOT / path
        assert file.is_file(), f"docs/plugins.md shows {path}, which does not exist"
        content = file.read_text(encoding="utf-8")
        if kind == "snippet":
            assert text == content, f"docs/plugins.md: the block of {path} differs from the file"
            shown.add(file)
        else:
            assert text in content, f"docs/plugins.md: the excerpt of {path} is not in the file:\n{text}"
    files = {f for f in PLUGIN.rglob("*") if f.is_file() and f.suffix in (".py", ".toml")
             and "__pycache__" not in f.parts}
    assert files <= shown, f"files of the example not shown whole in docs/plugins.md: {sorted(files - shown)}"


def test_the_example_pyproject_is_complete() -> None:
    project = tomllib.loads((PLUGIN / "pyproject.toml").read_text())["project"]
    assert project["name"] and project["version"]                  # pip refuses a project without them
    assert set(project["entry-points"]) == {"autosim.simulators", "autosim.tasks"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plugin, built and installed (no dependencies) into a folder of its own."""
    for module, package in (("pip", "pip"), ("hatchling", "hatchling (the example's build backend)")):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{package} is not installed: cannot install the guide's example plugin")
    target = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--no-index", "--target", str(target), str(PLUGIN)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"pip install of {PLUGIN} failed:\n{done.stderr}"
    return target


@pytest.fixture
def on_path(installed: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(installed))
    importlib.invalidate_caches()
    yield installed
    for name in [n for n in sys.modules if n == "my_renderer" or n.startswith("my_renderer.")]:
        del sys.modules[name]
    monkeypatch.undo()
    importlib.invalidate_caches()


def test_the_installed_example_is_found_by_the_registry(on_path: Path) -> None:
    registry = load_registry(("simulators", "tasks"))
    assert not [f for f in registry.failures if f.name in ("my-renderer", "disc-pose")], registry.failures
    assert registry.targets["simulators"]["my-renderer"] == "my_renderer"
    assert registry.targets["tasks"]["disc-pose"] == "my_renderer.pose:task"
    assert registry.versions["simulators"]["my-renderer"] == "my-renderer 0.1.0"
    assert registry.plugins["simulators"]["my-renderer"].__file__.startswith(str(on_path))


def test_the_smoke_config_runs(on_path: Path, tmp_path: Path) -> None:
    data = tomllib.loads((PLUGIN / "smoke.toml").read_text())
    data["cache_dir"] = str(tmp_path / "cache")
    run = open_run(data, tmp_path / "run")
    assert run.labels == ["disc"]
    run.execute()
    rows = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows][-1] == data["budget"]["iterations"]
    for name in ("checkpoint.pt", "psi.json", "summary.json"):
        assert (tmp_path / "run" / name).is_file()
    # The same record renders the same example (step 3 of "Checking your plugin").
    import my_renderer

    settings = my_renderer.Settings()
    scene = {"id": 0, "seed": 7, "brightness": 0.7, "radius": 6.0, "x": 0.1, "ring": True}
    first, second = my_renderer.render([scene], settings)[0], my_renderer.render([dict(scene)], settings)[0]
    assert (first.image == second.image).all() and (first.mask == second.mask).all()
