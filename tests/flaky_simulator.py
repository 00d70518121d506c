"""A tiny simulator for the executor tests: 2-D points drawn from each scene's seed, and
chosen scenes that raise, crash their process or hang (a set number of times each).

It is a module-level plugin object, so worker processes import it by reference
(``flaky_simulator:flaky_simulator``) the way they import an installed plugin's entry point.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from autosim_core import hookimpl
from autosim_core.records import Example
from autosim_core.space import Normal, ParameterSpace


class FlakySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    marker_dir: str = Field("", description="folder counting the failures so far (shared by all processes)")
    raise_on: list[int] = Field(default_factory=list, description="scene ids whose render raises")
    crash_on: list[int] = Field(default_factory=list, description="scene ids whose render kills the process")
    hang_on: list[int] = Field(default_factory=list, description="scene ids whose render never returns")
    nan_on: list[int] = Field(default_factory=list, description="scene ids rendered as NaN points")
    fail_times: int = Field(1, ge=0, description="failures per chosen scene before it renders")


def crash(code: int) -> None:
    """Ends this process at once (the tests' in-process workers replace it with a stand-in)."""
    os._exit(code)


def hang() -> None:
    """Never returns (the tests' in-process workers replace it with a stand-in)."""
    time.sleep(3600)


def _fail_now(marker_dir: str, kind: str, scene_id: Any, times: int) -> bool:
    """True (and one more failure counted) while the scene has failed fewer than ``times`` times."""
    folder = Path(marker_dir)
    done = len(list(folder.glob(f"{kind}-{scene_id}-*")))
    if done >= times:
        return False
    (folder / f"{kind}-{scene_id}-{done}-{os.getpid()}").touch()
    return True


class FlakySimulator:
    @hookimpl
    def simulator_settings_model(self) -> type[BaseModel]:
        return FlakySettings

    @hookimpl
    def parameter_space(self) -> ParameterSpace:
        return ParameterSpace(x=Normal(mean=1.0, std=0.5, low=-5, high=5))

    @hookimpl
    def render(self, scenes: list[dict[str, Any]], settings: FlakySettings) -> list[Example]:
        out = []
        for scene in scenes:
            sid = scene["id"]
            if sid in settings.raise_on and _fail_now(settings.marker_dir, "raise", sid, settings.fail_times):
                raise RuntimeError(f"scene {sid}: chosen to fail")
            if sid in settings.crash_on and _fail_now(settings.marker_dir, "crash", sid, settings.fail_times):
                crash(3)
            if sid in settings.hang_on and _fail_now(settings.marker_dir, "hang", sid, settings.fail_times):
                hang()
            gen = torch.Generator().manual_seed(int(scene["seed"]))
            point = torch.randn(2, generator=gen) + torch.tensor([float(scene["x"]), 0.0])
            if sid in settings.nan_on and _fail_now(settings.marker_dir, "nan", sid, settings.fail_times):
                point = torch.full_like(point, float("nan"))
            out.append(Example(image=point, label=int(scene["seed"]) % 2, scene=scene))
        return out


flaky_simulator = FlakySimulator()
