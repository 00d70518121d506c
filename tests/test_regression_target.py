"""``Example.target``: regression targets stored, cached and collated like every other field."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch

from autosim_core import Batch, Bounded, Example, ParameterSpace, hookimpl
from autosim_core.config import parse_config
from autosim_core.estimators import linear_plugin
from autosim_core.export import write_examples
from autosim_core.plugins import GROUPS, Registry
from autosim_core.run import Run
from autosim_core.searchers import AutoSimulate


class Ramp:
    """A 1-D "image" of 8 samples of a ramp; the target is its (slope, offset)."""

    @hookimpl
    def parameter_space(self) -> ParameterSpace:
        return ParameterSpace(slope=Bounded(low=-2, high=2, mean=0.0, std=0.5),
                              offset=Bounded(low=-1, high=1, mean=0.0, std=0.5))

    @hookimpl
    def presets(self) -> dict[str, dict[str, dict[str, Any]]]:
        return {"target": {"slope": {"mean": 1.0}}}

    @hookimpl
    def render(self, scenes: list[dict[str, Any]]) -> list[Example]:
        x = torch.linspace(-1, 1, 8)
        return [Example(image=s["slope"] * x + s["offset"],
                        target=torch.tensor([s["slope"], s["offset"]], dtype=torch.float32), scene=s)
                for s in scenes]


class LinearRegression:
    """Per-example squared error of a linear model: a regression task in five hooks."""

    @hookimpl
    def create_model(self) -> torch.nn.Module:
        return torch.nn.Linear(8, 2)

    @hookimpl
    def collate(self, examples: list[Example]) -> Batch:
        return Batch(torch.stack([e.image for e in examples]), torch.stack([e.target for e in examples]))

    @hookimpl
    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return ((outputs - targets) ** 2).sum(-1)

    @hookimpl
    def evaluate(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        return {"metric": -float(((outputs - targets) ** 2).sum(-1).mean())}


def test_target_round_trips_through_to_dict_and_weights_only_load() -> None:
    example = Example(image=torch.rand(3, 4, 4), target=torch.tensor([0.5, -1.0]), scene={"id": 1})
    scalar = Example(image=torch.rand(2), target=torch.tensor(2.5))
    buffer = io.BytesIO()
    torch.save([example.to_dict(), scalar.to_dict()], buffer)
    buffer.seek(0)
    back = [Example.from_dict(d) for d in torch.load(buffer, weights_only=True)]
    assert torch.equal(back[0].target, example.target) and back[0].scene == {"id": 1}
    assert back[1].target.shape == () and float(back[1].target) == 2.5


def test_dicts_without_target_still_load() -> None:
    old = {"image": torch.zeros(2), "mask": None, "label": 1, "objects": [], "scene": None}
    assert Example.from_dict(old).target is None


def test_export_writes_the_target(tmp_path: Path) -> None:
    write_examples([Example(image=torch.rand(3, 2, 2), target=torch.tensor([1.0, 2.0]))], tmp_path)
    row = json.loads((tmp_path / "annotations.jsonl").read_text())
    assert row["target"] == [1.0, 2.0]


def test_a_regression_task_runs_through_collate_loss_and_the_cache(tmp_path: Path) -> None:
    plugins: dict[str, dict[str, Any]] = {k: {} for k in GROUPS}
    plugins["simulators"]["ramp"] = Ramp()
    plugins["tasks"]["linreg"] = LinearRegression()
    plugins["estimators"]["linear"] = linear_plugin
    plugins["searchers"]["autosimulate"] = AutoSimulate
    config = {"seed": 0, "simulator": {"name": "ramp"}, "task": {"name": "linreg"},
              "estimator": {"name": "linear"}, "searcher": {"settings": {"scenes_per_iteration": 8}},
              "budget": {"iterations": 1}, "validation": {"count": 8, "seed": 1},
              "cache_dir": str(tmp_path / "cache")}
    registry = Registry(plugins=plugins)
    run = Run(parse_config(config), tmp_path / "run", registry=registry)
    summary = run.execute()
    assert summary["iterations"] == 1 and summary["val"]["metric"] <= 0
    assert run.val is not None and run.val.targets.shape == (8, 2)
    # The second run reads the validation set back from the cache, targets included.
    again = Run(parse_config(config), tmp_path / "again", registry=registry)
    cached = again.load_data("validation")
    assert cached is not None and torch.equal(cached.targets, run.val.targets)
