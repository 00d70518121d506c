"""Simulators declare their classes (``labels``); tasks adapt their settings to them (``apply_labels``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from autosim_core import hookimpl
from autosim_core.config import ConfigError, parse_config
from autosim_core.estimators import linear_plugin
from autosim_core.plugins import GROUPS, Registry
from autosim_core.run import Run
from autosim_core.searchers import AutoSimulate
from autosim_core.toy import ToySimulator, ToyTask, toy_task


class Declares(ToySimulator):
    def __init__(self, labels: Any):
        self.declared = labels

    @hookimpl
    def labels(self) -> Any:
        return self.declared


class CountSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    classes: int = 2


class Adapts(ToyTask):
    """The toy task with a ``classes`` setting that follows the simulator's labels."""

    @hookimpl
    def task_settings_model(self) -> type[BaseModel]:
        return CountSettings

    @hookimpl
    def apply_labels(self, settings: CountSettings, labels: list[str]) -> CountSettings:
        if "classes" in settings.model_fields_set:
            return settings
        if len(labels) > 5:
            raise ValueError(f"at most 5 classes, got {len(labels)}")
        return CountSettings(classes=len(labels))


def make_run(tmp_path: Path, simulator: Any, task: Any, task_settings: dict[str, Any] | None = None) -> Run:
    plugins: dict[str, dict[str, Any]] = {k: {} for k in GROUPS}
    plugins["simulators"]["sim"] = simulator
    plugins["tasks"]["task"] = task
    plugins["searchers"]["autosimulate"] = AutoSimulate
    plugins["estimators"]["linear"] = linear_plugin
    config = parse_config({"seed": 0, "simulator": {"name": "sim"},
                           "task": {"name": "task", "settings": task_settings or {}},
                           "estimator": {"name": "linear"}, "budget": {"iterations": 1},
                           "validation": {"count": 8, "seed": 1}, "cache_dir": str(tmp_path / "cache")})
    return Run(config, tmp_path / "run", registry=Registry(plugins=plugins))


def test_declared_labels_reach_the_task_settings(tmp_path: Path) -> None:
    run = make_run(tmp_path, Declares(["a", "b", "c"]), Adapts())
    assert run.labels == ["a", "b", "c"]
    assert run.task_settings.classes == 3
    assert run.settings_json()["task"]["settings"] == {"classes": 3}


def test_explicit_task_settings_win(tmp_path: Path) -> None:
    run = make_run(tmp_path, Declares(["a", "b", "c"]), Adapts(), {"classes": 2})
    assert run.task_settings.classes == 2


def test_a_task_without_apply_labels_keeps_its_settings(tmp_path: Path) -> None:
    run = make_run(tmp_path, Declares(["a", "b"]), toy_task)
    assert run.labels == ["a", "b"]
    assert run.task_settings.hidden == 0


def test_a_simulator_without_labels_declares_none(tmp_path: Path) -> None:
    class Plain:  # the toy simulator's two required hooks, and no labels hook
        parameter_space = ToySimulator.parameter_space
        presets = ToySimulator.presets
        render = ToySimulator.render

    run = make_run(tmp_path, Plain(), Adapts())
    assert run.labels is None
    assert run.task_settings.classes == 2


def test_the_toy_simulator_declares_its_two_classes(tmp_path: Path) -> None:
    assert make_run(tmp_path, ToySimulator(), toy_task).labels == ["class0", "class1"]


@pytest.mark.parametrize("labels", [["a", "a"], [], ["a", 3], "abc"])
def test_bad_labels_are_a_config_error(tmp_path: Path, labels: Any) -> None:
    with pytest.raises(ConfigError) as err:
        make_run(tmp_path, Declares(labels), Adapts())
    assert len(err.value.lines) == 1
    assert err.value.lines[0].startswith("simulator.name: simulator 'sim' declares bad labels")


def test_labels_the_task_cannot_take_are_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        make_run(tmp_path, Declares(list("abcdef")), Adapts())
    assert err.value.lines == ["task.settings: at most 5 classes, got 6 (with the labels simulator 'sim' "
                               "declares: ['a', 'b', 'c', 'd', 'e', 'f'])"]
