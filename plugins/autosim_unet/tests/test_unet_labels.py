"""The unet task takes its classes from the simulator's declared labels; bad mask ids fail in one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from autosim_core.config import ConfigError, parse_config
from autosim_core.hookspecs import hookimpl
from autosim_core.records import Example
from autosim_core.run import Run
from autosim_core.space import Categorical, ParameterSpace
from unet_helpers import SIZE, draw, registry

from autosim_unet.plugin import UNetSettings, UNetTask, collate_examples

SIX = ["disc", "square", "ring", "bar", "dot", "cross"]


class SixClasses:
    """Draws one shape whose mask id is 1 + its index in SIX (ids up to 6)."""

    def __init__(self, declared: list[str] | None = SIX, shift: int = 0):
        self.declared = declared
        self.shift = shift

    @hookimpl
    def labels(self) -> list[str] | None:
        return self.declared

    @hookimpl
    def parameter_space(self) -> ParameterSpace:
        return ParameterSpace(kind=Categorical(choices=SIX))

    @hookimpl
    def presets(self) -> dict[str, dict[str, dict[str, Any]]]:
        return {"target": {}}

    @hookimpl
    def render(self, scenes: list[dict[str, Any]]) -> list[Example]:
        out = []
        for scene in scenes:
            ex = draw("disc", 6.0, 0.4, scene["seed"])
            ex.mask = ex.mask * (SIX.index(scene["kind"]) + 1 + self.shift)
            ex.scene = scene
            out.append(ex)
        return out


def make_run(tmp_path: Path, simulator: Any, task: dict[str, Any] | None = None) -> Run:
    reg = registry()
    reg.plugins["simulators"]["six"] = simulator
    config = parse_config({
        "seed": 0, "simulator": {"name": "six"}, "task": {"name": "unet", "settings": task or {}},
        "searcher": {"name": "autosimulate", "settings": {"scenes_per_iteration": 12}},
        "estimator": {"name": "linear"}, "training": {"batch_size": 6, "eval_batch_size": 6},
        "budget": {"iterations": 1}, "validation": {"count": 12, "seed": 3},
        "cache_dir": str(tmp_path / "cache")})
    return Run(config, tmp_path / "run", registry=reg)


def test_six_declared_classes_train_the_unet_without_task_settings(tmp_path: Path) -> None:
    run = make_run(tmp_path, SixClasses())
    assert run.task_settings.num_classes == 7
    assert run.task_settings.class_names == ["background", *SIX]
    summary = run.execute()
    assert summary["iterations"] == 1
    assert run.model.head.out_channels == 7
    row = json.loads((run.out_dir / "history.jsonl").read_text().splitlines()[0])
    names = {k.removeprefix("iou_") for k in row["val_details"] if k.startswith("iou_")}
    assert names and names <= {"background", *SIX}
    assert json.loads((run.out_dir / "config.json").read_text())["task"]["settings"]["num_classes"] == 7


def test_explicit_task_settings_win_over_the_labels(tmp_path: Path) -> None:
    names = ["void", *(f"k{i}" for i in range(1, 8))]
    assert make_run(tmp_path, SixClasses(), {"num_classes": 8}).task_settings.class_names == \
        ["background", *(f"class{i}" for i in range(1, 8))]
    explicit = make_run(tmp_path, SixClasses(), {"class_names": names}).task_settings
    assert explicit.num_classes == 8 and explicit.class_names == names
    same = make_run(tmp_path, SixClasses(), {"num_classes": 7, "width": 4}).task_settings
    assert same.class_names == ["background", *SIX] and same.width == 4


def test_settings_that_contradict_the_labels_are_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        make_run(tmp_path, SixClasses(), {"class_weights": [1.0, 2.0, 1.0, 1.0]})
    assert err.value.lines == ["task.settings: class_weights has 4 entries for num_classes = 7 "
                               f"(with the labels simulator 'six' declares: {SIX})"]


def test_an_out_of_range_mask_id_is_a_one_line_error() -> None:
    settings = UNetSettings(num_classes=4)
    good = Example(image=torch.rand(3, SIZE, SIZE), mask=torch.zeros(SIZE, SIZE, dtype=torch.long),
                   scene={"id": "ok"})
    mask = torch.zeros(SIZE, SIZE, dtype=torch.long)
    mask[2, 3] = 5
    mask[4, 4] = 255  # ignore_index: allowed
    bad = Example(image=torch.rand(3, SIZE, SIZE), mask=mask, scene={"id": 17})
    with pytest.raises(ValueError) as err:
        collate_examples([good, bad], settings)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("example 17: mask class id 5 outside the valid range 0..3 or 255 (ignore_index)")
    mask[2, 3] = 3
    assert collate_examples([good, bad], settings).targets.shape == (2, SIZE, SIZE)
    with pytest.raises(ValueError, match=r"^example 17: mask class id 255 outside the valid range 0\.\.3 of"):
        collate_examples([bad], UNetSettings(num_classes=4, ignore_index=None))


def test_a_simulator_rendering_ids_past_its_labels_fails_in_one_line(tmp_path: Path) -> None:
    run = make_run(tmp_path, SixClasses(shift=1))
    with pytest.raises(ValueError, match=r"^example \S+: mask class id 7 outside the valid "
                                         r"range 0\.\.6 or 255 \(ignore_index\) of num_classes = 7") as err:
        run.execute()
    assert "\n" not in str(err.value)


def test_the_task_hook_accepts_plain_dicts() -> None:
    settings = UNetTask().apply_labels(settings={"width": 4}, labels=["a", "b"])
    assert settings.num_classes == 3 and settings.class_names == ["background", "a", "b"]
