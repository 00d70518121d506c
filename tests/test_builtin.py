"""The core's entry points name light modules (``autosim_core.builtin``): registering them
imports no torch, and each light object stands for its implementation exactly."""

from __future__ import annotations

import ast
from importlib import metadata
from pathlib import Path

import pytest

from autosim_core import blackbox, estimators, searchers, toy
from autosim_core.builtin import estimators as light_estimators
from autosim_core.builtin import searchers as light_searchers
from autosim_core.builtin import toy as light_toy
from autosim_core.plugins import GROUPS, heavy_imports, hook_signatures, load_registry

PACKAGE = Path(__file__).resolve().parents[1] / "autosim_core"



def test_registering_the_core_plugins_imports_no_torch() -> None:
    assert heavy_imports("autosim-core") == []


def test_the_check_finds_a_heavy_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A distribution whose entry-point module imports numpy at the top, and one that declares none."""
    dist = tmp_path / "autosim_heavy_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: autosim-heavy-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[autosim.estimators]\nheavy = autosim_heavy_demo:plugin\n")
    (tmp_path / "autosim_heavy_demo.py").write_text("import numpy\n\nplugin = object()\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    assert heavy_imports("autosim-heavy-demo") == ["numpy"]
    with pytest.raises(RuntimeError, match="declares no entry point"):
        heavy_imports("autosim-no-such-distribution")


def test_every_core_entry_point_names_the_builtin_package() -> None:
    targets = [ep.value for group in GROUPS.values() for ep in metadata.entry_points(group=group)
               if ep.dist is not None and ep.dist.name == "autosim-core"]
    assert targets and all(t.startswith("autosim_core.builtin.") for t in targets), targets


def test_load_registry_by_name_imports_only_those() -> None:
    registry = load_registry(names={"fixed", "quadratic"})
    assert set(registry.plugins["searchers"]) == {"fixed"}
    assert set(registry.plugins["estimators"]) == {"quadratic"}
    assert not registry.plugins["simulators"] and not registry.plugins["tasks"]


@pytest.mark.parametrize(("light", "real"), [
    (light_searchers.AutoSimulate, searchers.AutoSimulate), (light_searchers.Fixed, searchers.Fixed),
    (light_searchers.RandomSearch, blackbox.RandomSearch), (light_searchers.BayesianSearch, blackbox.BayesianSearch),
    (light_searchers.Reinforce, blackbox.Reinforce),
], ids=lambda c: c.__qualname__)
def test_a_light_searcher_reads_as_its_implementation(light: type, real: type) -> None:
    """What the run reads of a searcher class before constructing it (with the run's defaults)."""
    assert light.load() is real
    assert light.settings_model is real.settings_model
    assert light.uses_estimator == getattr(real, "uses_estimator", True)
    assert light.requires_validation == getattr(real, "requires_validation", False)
    assert light.requires == getattr(real, "requires", ())
    assert light.missing_requirements() == getattr(real, "missing_requirements", lambda: [])()


def test_constructing_a_light_searcher_makes_the_implementation() -> None:
    settings = light_searchers.Fixed.settings_model()
    made = light_searchers.Fixed(None, settings)
    assert type(made) is searchers.Fixed and made.settings is settings


@pytest.mark.parametrize(("light", "real"), [
    (light_estimators.quadratic_plugin, estimators.quadratic_plugin),
    (light_estimators.approx_quadratic_plugin, estimators.approx_quadratic_plugin),
    (light_estimators.linear_plugin, estimators.linear_plugin),
    (light_estimators.no_val_plugin, estimators.no_val_plugin),
    (light_toy.toy_simulator, toy.toy_simulator), (light_toy.toy_task, toy.toy_task),
], ids=lambda p: type(p).__name__)
def test_a_light_plugin_declares_the_hooks_of_its_implementation(light: object, real: object) -> None:
    assert hook_signatures(light) == hook_signatures(real)
    for hook in ("estimator_settings_model", "simulator_settings_model", "task_settings_model"):
        if hasattr(real, hook):
            assert getattr(light, hook)() is getattr(real, hook)()


def test_the_toy_simulator_answers_through_its_light_object() -> None:
    assert light_toy.toy_simulator.presets() == toy.toy_simulator.presets()
    assert light_toy.toy_simulator.labels() == toy.toy_simulator.labels()
    assert light_toy.toy_simulator.parameter_space().to_dict() == toy.toy_space().to_dict()


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (an import inside a function counts too)."""
    package = "autosim_core" if path.parent == PACKAGE else "autosim_core.builtin"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(filter(None, [base, node.module]))
            found |= {module, *(f"{module}.{a.name}" for a in node.names)}
    return found


def test_no_core_module_imports_the_builtin_package() -> None:
    """builtin/ imports the implementations on first use; they never import it back (no circle),
    and what both share (settings models) is in the light ``builtin_settings``."""
    for path in PACKAGE.glob("*.py"):
        offending = {m for m in _imports(path) if m == "autosim_core.builtin" or m.startswith("autosim_core.builtin.")}
        assert not offending, f"{path.name} imports {offending}"
    light = {m for m in _imports(PACKAGE / "builtin_settings.py") if m.startswith("autosim_core")}
    assert light <= {"autosim_core.space", "autosim_core.space.Floors", "autosim_core.hypergrad",
                     "autosim_core.hypergrad.Baseline"}, light
