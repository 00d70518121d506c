"""The detection tasks take their classes from the simulator's declared labels."""

from __future__ import annotations

from typing import Any

import pytest
from autosim_core.config import parse_config
from autosim_core.hookspecs import hookimpl
from autosim_core.plugins import load_registry
from autosim_core.run import Run

from autosim_yolo.settings import SHAPE_CLASSES
from autosim_yolo.shapes import ShapesSimulator, shapes_simulator


class Renamed(ShapesSimulator):
    """The shapes simulator declaring its classes in another order (boxes keep their names)."""

    @hookimpl
    def labels(self) -> list[str]:
        return ["triangle", "circle", "square"]


@pytest.fixture(scope="module")
def registry() -> Any:
    reg = load_registry()
    reg.plugins["simulators"]["renamed"] = Renamed()
    return reg


def make_run(tmp_path, registry, simulator: str = "shapes", task: str = "yolo",
             settings: dict[str, Any] | None = None) -> Run:
    config = parse_config({
        "seed": 0, "simulator": {"name": simulator, "settings": {"image_size": 64}},
        "task": {"name": task, "settings": {"input_size": 64, **(settings or {})}},
        "estimator": {"name": "linear"}, "budget": {"iterations": 1},
        "validation": {"preset": "target", "count": 4, "seed": 1}, "cache_dir": str(tmp_path / "cache")})
    return Run(config, tmp_path / "run", registry=registry)


def test_the_shapes_simulator_declares_its_classes() -> None:
    assert shapes_simulator.labels() == SHAPE_CLASSES


@pytest.mark.parametrize("task", ["yolo", "faster-rcnn"])
def test_the_simulator_classes_reach_the_task_without_settings(tmp_path, registry, task) -> None:
    run = make_run(tmp_path, registry, task=task)
    assert run.labels == SHAPE_CLASSES and run.task_settings.classes == SHAPE_CLASSES
    renamed = make_run(tmp_path, registry, "renamed", task)
    assert renamed.task_settings.classes == ["triangle", "circle", "square"]
    assert renamed.task_settings.input_size == 64
    _, batch = renamed.render_training(renamed.space.init_psi(), 4)
    ids = batch.targets[..., 4]
    assert int((ids >= 0).sum()) > 0 and int(ids.max()) <= 2


def test_explicit_classes_win(tmp_path, registry) -> None:
    run = make_run(tmp_path, registry, "renamed", settings={"classes": ["circle", "square", "triangle", "star"]})
    assert run.task_settings.classes == ["circle", "square", "triangle", "star"]


class TwoLabels(ShapesSimulator):
    """The shapes simulator declaring two of the three classes it renders."""

    @hookimpl
    def labels(self) -> list[str]:
        return ["circle", "square"]


@pytest.mark.parametrize(("settings", "source"), [
    ({}, r"the simulator's labels hook"), ({"classes": ["circle", "square"]}, r"\[task.settings\] classes")])
def test_an_object_outside_the_classes_names_where_the_classes_came_from(tmp_path, registry, settings,
                                                                         source) -> None:
    registry.plugins["simulators"]["two-labels"] = TwoLabels()
    run = make_run(tmp_path, registry, "two-labels", settings=settings)
    with pytest.raises(ValueError, match=rf"object category 'triangle' is not one of the task's classes "
                                         rf"\['circle', 'square'\] \(from {source}\)"):
        run.render_training(run.space.init_psi(), 16)
