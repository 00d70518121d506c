"""A tiny segmentation simulator and helpers that build core runs around the unet task.

The simulator draws one disc or square on a grey background; psi controls the background
brightness, the shape's size and which shape is drawn. It lives here so the tests need no
other plugin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from autosim_core.config import parse_config
from autosim_core.estimators import approx_quadratic_plugin, linear_plugin, no_val_plugin, quadratic_plugin
from autosim_core.hookspecs import hookimpl
from autosim_core.plugins import GROUPS, Registry
from autosim_core.records import Example
from autosim_core.run import Run
from autosim_core.searchers import AutoSimulate
from autosim_core.space import Bounded, Categorical, Normal, ParameterSpace

from autosim_unet.plugin import UNetTask

SIZE = 16
CLASS_NAMES = ["background", "disc", "square"]


def draw(shape: str, size: float, brightness: float, seed: int, side: int = SIZE) -> Example:
    g = torch.Generator().manual_seed(seed)
    radius = max(1.0, size / 2)
    lo, hi = radius, side - radius
    cx, cy = (lo + (hi - lo) * torch.rand(2, generator=g)).tolist()
    yy, xx = torch.meshgrid(torch.arange(side) + 0.5, torch.arange(side) + 0.5, indexing="ij")
    if shape == "disc":
        inside = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2
        label = 1
    else:
        inside = ((xx - cx).abs() <= radius) & ((yy - cy).abs() <= radius)
        label = 2
    colour = torch.rand(3, generator=g) * 0.5 + 0.25
    image = torch.full((3, side, side), brightness)
    image = torch.where(inside, colour[:, None, None], image)
    image = (image + 0.03 * torch.randn(image.shape, generator=g)).clamp(0, 1)
    mask = inside.long() * label
    return Example(image=image, mask=mask)


class TinyShapes:
    @hookimpl
    def parameter_space(self) -> ParameterSpace:
        return ParameterSpace(
            brightness=Bounded(low=0.0, high=1.0, mean=0.3, std=0.5),
            size=Normal(mean=3.0, std=1.0, low=1.5, high=8.0),
            shape=Categorical(choices=["disc", "square"]),
        )

    @hookimpl
    def presets(self) -> dict[str, dict[str, dict[str, Any]]]:
        return {"initial": {},
                "target": {"brightness": {"mean": 0.7}, "size": {"mean": 6.0}}}

    @hookimpl
    def render(self, scenes: list[dict[str, Any]]) -> list[Example]:
        out = []
        for scene in scenes:
            ex = draw(scene["shape"], scene["size"], scene["brightness"], scene["seed"])
            ex.scene = scene
            out.append(ex)
        return out


class Spy:
    """An estimator that records what the core hands it, then defers to another estimator."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.calls: list[dict[str, Any]] = []

    @hookimpl
    def estimate_hypergrad(self, problem: Any, settings: Any) -> Any:
        g_val = problem.val_gradient()
        hv = problem.hvp(g_val)
        self.calls.append({"params": set(problem.params), "g_val": set(g_val), "hvp": set(hv)})
        return self.inner.estimate_hypergrad(problem=problem)


ESTIMATORS = {"quadratic": quadratic_plugin, "approx-quadratic": approx_quadratic_plugin,
              "linear": linear_plugin, "no-val": no_val_plugin}


def registry(estimators: dict[str, Any] | None = None) -> Registry:
    plugins: dict[str, dict[str, Any]] = {k: {} for k in GROUPS}
    plugins["simulators"]["tiny-shapes"] = TinyShapes()
    plugins["tasks"]["unet"] = UNetTask()
    plugins["estimators"].update(estimators or ESTIMATORS)
    plugins["searchers"]["autosimulate"] = AutoSimulate
    return Registry(plugins=plugins)


def make_config(tmp_path: Path, estimator: str, *, iterations: int = 2, validation: bool = True,
                task: dict[str, Any] | None = None, estimator_settings: dict[str, Any] | None = None) -> Any:
    data: dict[str, Any] = {
        "seed": 0,
        "simulator": {"name": "tiny-shapes", "start": "initial"},
        "task": {"name": "unet", "settings": {"num_classes": 3, "class_names": CLASS_NAMES, "width": 4,
                                              **(task or {})}},
        "searcher": {"name": "autosimulate", "settings": {"scenes_per_iteration": 4, "lr": 0.05}},
        "estimator": {"name": estimator, "settings": estimator_settings or {}},
        "training": {"epochs": 1, "batch_size": 2, "lr": 0.01, "eval_batch_size": 4},
        "budget": {"iterations": iterations},
        "cache_dir": str(tmp_path / "cache"),
    }
    if validation:
        data["validation"] = {"preset": "target", "count": 4, "seed": 11}
        data["test"] = {"preset": "target", "count": 4, "seed": 12}
    return parse_config(data)


def make_run(tmp_path: Path, estimator: str, registry_: Registry | None = None, **kwargs: Any) -> Run:
    return Run(make_config(tmp_path, estimator, **kwargs), tmp_path / f"run-{estimator}",
               registry=registry_ or registry())
