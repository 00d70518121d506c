"""Shared by the executor tests (processes here, Ray in test_executors_ray.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from flaky_simulator import flaky_simulator

from autosim_core.config import parse_config
from autosim_core.plugins import load_registry
from autosim_core.records import Example
from autosim_core.run import Run


def flaky_config(marker_dir: Path, *, executor: dict[str, Any] | None = None, iterations: int = 3,
                 scenes: int = 12, **faults: Any) -> dict[str, Any]:
    return {
        "seed": 5,
        "simulator": {"name": "flaky", "settings": {"marker_dir": str(marker_dir), **faults}},
        "task": {"name": "toy-logistic"},
        "searcher": {"name": "fixed", "settings": {"scenes_per_iteration": scenes}},
        "training": {"epochs": 2, "batch_size": 4, "lr": 0.05, "device": "cpu"},
        "budget": {"iterations": iterations},
        "executor": executor or {},
    }


def flaky_run(tmp_path: Path, name: str, **kwargs: Any) -> Run:
    marker_dir = tmp_path / f"{name}-markers"
    marker_dir.mkdir(parents=True, exist_ok=True)
    registry = load_registry()
    registry.plugins["simulators"]["flaky"] = flaky_simulator
    return Run(parse_config(flaky_config(marker_dir, **kwargs)), tmp_path / name, registry=registry)


def render_batch(run: Run, count: int = 10, seed: int = 3) -> tuple[list[dict[str, Any]], list[Example]]:
    generator = torch.Generator().manual_seed(seed)
    scenes, examples = run.render(run.space, run.space.init_psi(), count, generator, list(range(count)))
    return scenes.records, examples


def expected_points(records: list[dict[str, Any]]) -> torch.Tensor:
    """Each scene's point from its own record alone: N(0, I) from its seed, shifted by x."""
    points = []
    for record in records:
        noise = torch.randn(2, generator=torch.Generator().manual_seed(int(record["seed"])))
        points.append(noise + torch.tensor([float(record["x"]), 0.0]))
    return torch.stack(points)
