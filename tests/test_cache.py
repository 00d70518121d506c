"""Cached evaluation sets: keyed on the simulator's source; ``autosim cache list`` / ``clear``."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from autosim_core.cache import cached_sets, source_fingerprint
from autosim_core.cli import app
from autosim_core.config import parse_config
from autosim_core.estimators import linear_plugin
from autosim_core.plugins import GROUPS, Registry
from autosim_core.run import Run
from autosim_core.searchers import AutoSimulate

SIMULATOR = '''
import torch
from autosim_core import Example, Normal, ParameterSpace, hookimpl

BRIGHTNESS = {brightness}


class Simulator:
    @hookimpl
    def parameter_space(self):
        return ParameterSpace(x=Normal(mean=0.0, std=1.0))

    @hookimpl
    def render(self, scenes):
        return [Example(image=torch.tensor([s["x"], BRIGHTNESS]), label=0, scene=s) for s in scenes]


simulator = Simulator()
'''


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A simulator in its own editable module; ``edit(b)`` rewrites its source and reloads it."""
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # a same-size edit within a second: no stale .pyc
    folder = tmp_path / "src"
    folder.mkdir()
    source = folder / "edited_simulator.py"
    source.write_text(SIMULATOR.format(brightness=0.25))
    monkeypatch.syspath_prepend(str(folder))
    module = importlib.import_module("edited_simulator")

    def edit(brightness: float) -> Any:
        source.write_text(SIMULATOR.format(brightness=brightness))
        return importlib.reload(module)

    yield module, edit
    sys.modules.pop("edited_simulator", None)


def make_run(tmp_path: Path, simulator: Any, out: str) -> Run:
    from autosim_core.toy import toy_task

    plugins: dict[str, dict[str, Any]] = {k: {} for k in GROUPS}
    plugins["simulators"]["edited"] = simulator
    plugins["tasks"]["toy"] = toy_task
    plugins["estimators"]["linear"] = linear_plugin
    plugins["searchers"]["autosimulate"] = AutoSimulate
    registry = Registry(plugins=plugins)
    registry.versions["simulators"]["edited"] = "edited-simulator 0.1.0"  # unchanged by the edit
    config = parse_config({"seed": 0, "simulator": {"name": "edited"}, "task": {"name": "toy"},
                           "estimator": {"name": "linear"}, "budget": {"iterations": 1},
                           "validation": {"preset": None, "count": 4, "seed": 1},
                           "cache_dir": str(tmp_path / "cache")})
    return Run(config, tmp_path / out, registry=registry)


def test_an_edited_render_renders_the_validation_set_anew(tmp_path: Path, plugin_module) -> None:
    module, edit = plugin_module
    first = make_run(tmp_path, module.simulator, "a").load_data("validation")
    assert first is not None and float(first.inputs[0, 1]) == 0.25
    same = make_run(tmp_path, module.simulator, "b").load_data("validation")
    assert same is not None and float(same.inputs[0, 1]) == 0.25
    assert len(cached_sets(tmp_path / "cache")) == 1

    module = edit(0.75)
    edited = make_run(tmp_path, module.simulator, "c").load_data("validation")
    assert edited is not None and float(edited.inputs[0, 1]) == 0.75
    assert len(cached_sets(tmp_path / "cache")) == 2


def test_the_source_fingerprint_follows_the_file(plugin_module) -> None:
    module, edit = plugin_module
    before = source_fingerprint(module.simulator)
    assert before and before == source_fingerprint(module.simulator)
    assert source_fingerprint(edit(0.5).simulator) != before


def test_cache_list_and_clear(tmp_path: Path, plugin_module) -> None:
    module, _ = plugin_module
    cache = tmp_path / "cache"
    make_run(tmp_path, module.simulator, "a").load_data("validation")
    (cache / "notes.txt").write_text("not a cached set")

    listed = CliRunner().invoke(app, ["cache", "list", "--dir", str(cache)])
    assert listed.exit_code == 0, listed.output
    assert listed.stdout.startswith("edited\tvalidation\t")

    other = CliRunner().invoke(app, ["cache", "clear", "--dir", str(cache), "--simulator", "other"])
    assert other.exit_code == 0 and "removed 0 cached set(s)" in other.stdout
    assert len(cached_sets(cache)) == 1

    cleared = CliRunner().invoke(app, ["cache", "clear", "--dir", str(cache)])
    assert cleared.exit_code == 0, cleared.output
    assert "removed 1 cached set(s)" in cleared.stdout
    assert cached_sets(cache) == [] and (cache / "notes.txt").exists()


def test_cache_clear_uses_autosim_cache_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOSIM_CACHE", str(tmp_path))
    (tmp_path / "toy-gaussians-test-0123456789abcdef0123.pt").write_bytes(b"x")
    result = CliRunner().invoke(app, ["cache", "clear"])
    assert result.exit_code == 0 and "removed 1 cached set(s)" in result.stdout
    assert not any(tmp_path.iterdir())
