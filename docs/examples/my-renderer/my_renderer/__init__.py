"""A renderer in one file: a bright disc on a dark background."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from autosim_core import Bernoulli, Bounded, Example, LogNormal, Normal, ParameterSpace, hookimpl


class Settings(BaseModel):               # the [simulator.settings] table of a run's config
    model_config = ConfigDict(extra="forbid")
    size: int = Field(32, ge=16, description="image side in pixels")


@hookimpl
def simulator_settings_model():
    return Settings


@hookimpl
def parameter_space(settings: Settings) -> ParameterSpace:
    n = settings.size
    return ParameterSpace(
        brightness=LogNormal(median=0.5, std=0.3, high=1.0),
        radius=Bounded(low=2, high=3 * n / 8, mean=n / 6, std=0.5),       # pixels
        x=Normal(mean=0.0, std=0.2, low=-0.5, high=0.5),                  # fraction of the width
        ring=Bernoulli(p=0.2),
    )


@hookimpl
def presets(settings: Settings) -> dict[str, dict[str, dict[str, Any]]]:
    return {
        "initial": {},                                                    # the space as declared
        "target": {"brightness": {"median": 0.9}, "radius": {"mean": settings.size / 4}},
    }


@hookimpl
def labels() -> list[str]:
    return ["disc"]                      # mask id 1


@hookimpl
def render(scenes: list[dict[str, Any]], settings: Settings) -> list[Example]:
    import torch  # here, not at the top: finding the plugin stays light

    out = []
    for scene in scenes:
        g = torch.Generator().manual_seed(scene["seed"])     # noise comes from the scene's seed
        n = settings.size
        yy, xx = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        cx = n / 2 + scene["x"] * n
        d2 = (xx - cx) ** 2 + (yy - n / 2) ** 2
        inside = d2 <= scene["radius"] ** 2
        if scene["ring"]:
            inside &= d2 >= (scene["radius"] / 2) ** 2
        image = 0.05 * torch.rand(3, n, n, generator=g) + scene["brightness"] * inside
        pose = torch.tensor([scene["x"], scene["radius"] / n, scene["brightness"]])
        out.append(Example(image=image.clamp(0, 1), mask=inside.long(), target=pose, scene=scene))
    return out
