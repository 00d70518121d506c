"""Settings, the parameter space (one categorical over room x location x quality, plus optional
continuous knobs) and the presets of the ``arnold`` simulator."""

from __future__ import annotations

from typing import Any, Literal

from autosim_core import Categorical, LogNormal, Normal, ParameterSpace
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .scene import QUALITIES, ROOMS, TARGET_LOCATIONS, TARGET_ROOM, cell_name

MAX_OBJECTS = 8


class ArnoldSettings(BaseModel):
    """``[simulator.settings]`` of the ``arnold`` simulator."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["cycles"] = Field(
        "cycles", description="'cycles': Blender Cycles through bpy (pip install 'autosim-arnold[blender]'), the "
                              "only backend so far (the plugin's README says where an Arnold one would go)")
    image_size: int = Field(96, ge=16, le=2048, description="side of the square images, in pixels")
    rooms: list[str] = Field(default_factory=lambda: list(ROOMS),
                             description=f"training rooms of the categorical, from {list(ROOMS)}")
    locations: int = Field(9, ge=1, le=9, description="locations per room in the categorical (the first N)")
    qualities: list[Literal["low", "high"]] = Field(default_factory=lambda: list(QUALITIES),
                                                    description="render qualities in the categorical")
    threads: int = Field(0, ge=0, description="CPU threads Cycles renders with (0: all of the machine's)")
    models_path: str | None = Field(None, description="a BOP models/ folder (obj_*.ply, millimetres) whose "
                                                      "objects replace the shipped procedural ones")
    min_visible_fraction: float = Field(0.1, ge=0, le=1, description="objects less visible than this are "
                                        "flagged 'ignore' in Example.objects (the detection task drops them)")

    @model_validator(mode="after")
    def _check(self) -> ArnoldSettings:
        unknown = sorted(set(self.rooms) - set(ROOMS))
        if unknown or not self.rooms:
            raise ValueError(f"rooms {unknown or '[]'} unknown or empty; allowed: {list(ROOMS)}")
        if len(set(self.rooms)) != len(self.rooms) or len(set(self.qualities)) != len(self.qualities):
            raise ValueError("rooms and qualities must be distinct")
        if not self.qualities:
            raise ValueError("qualities must name at least one of 'low', 'high'")
        return self


def as_settings(settings: Any) -> ArnoldSettings:
    if isinstance(settings, ArnoldSettings):
        return settings
    return ArnoldSettings.model_validate(settings or {})


def cells(settings: ArnoldSettings) -> list[str]:
    """The categorical's choices, room-major: ``room:location:quality``."""
    return [cell_name(r, loc, q) for r in settings.rooms for loc in range(settings.locations)
            for q in settings.qualities]


def arnold_space(settings: Any = None) -> ParameterSpace:
    """The categorical ``cell`` (uniform: the hand-set starting distribution) and three knobs,
    fixed unless a config's overrides set ``learn = true``: the lamp and sky ``light`` factor,
    the ``camera_distance`` factor and ``n_objects``."""
    s = as_settings(settings)
    return ParameterSpace(
        cell=Categorical(choices=cells(s)),
        light=LogNormal(median=1.0, std=0.25, low=0.2, high=5.0, learn=False),
        camera_distance=LogNormal(median=1.0, std=0.1, low=0.6, high=1.6, learn=False),
        n_objects=Normal(mean=4.0, std=1.5, low=1, high=MAX_OBJECTS, integer=True, learn=False),
    )


def useful_cells(settings: ArnoldSettings) -> list[str]:
    """The cells closest to the target domain: the nearly top-down, closest location (8), and the
    oblique close one (7) and the top-down middle-distance one (5), at high quality where offered."""
    quality = "high" if "high" in settings.qualities else settings.qualities[0]
    return [cell_name(r, loc, quality) for r in settings.rooms for loc in (5, 7, 8) if loc < settings.locations]


def wide_preset(settings: Any = None) -> dict[str, dict[str, Any]]:
    """Broad domain randomisation, set by hand from what each parameter means: every cell equally
    likely, and each knob centred in its declared range (the log-centre for the log-normal
    factors) with a std that puts about 95 % of the draws inside it (range / 3.92 of the latent;
    the object count, an integer, nearly even over its range instead).
    It changes what is sampled, not what is learnt: the knobs stay fixed unless overrides say so."""
    choices = cells(as_settings(settings))
    return {
        "cell": {"probs": [1.0 / len(choices)] * len(choices)},
        "light": {"median": 1.0, "std": 0.8},  # the declared 0.2 to 5 times the room's lamp and sky
        "camera_distance": {"median": 0.98, "std": 0.25},  # the declared 0.6 to 1.6 times the location's
        # a count is clipped to 1..8 and rounded: each count gets 10-16 % of the draws
        "n_objects": {"mean": 4.5, "std": 2.5},
    }


def arnold_presets(settings: Any = None) -> dict[str, dict[str, dict[str, Any]]]:
    """``uniform`` (the default), ``matched`` (the in-space distribution closest to the target:
    80 % on :func:`useful_cells`), ``target`` (the held-out workshop: validation, test, oracle),
    ``wide`` (broad hand-set randomisation, the usual sim-to-real baseline: :func:`wide_preset`)."""
    s = as_settings(settings)
    choices = cells(s)
    useful = set(useful_cells(s))
    matched = [0.8 / len(useful) if c in useful else 0.2 / (len(choices) - len(useful)) for c in choices] \
        if useful and len(useful) < len(choices) else [1.0 / len(choices)] * len(choices)
    target = [cell_name(TARGET_ROOM.name, loc, "high") for loc in TARGET_LOCATIONS]
    return {
        "uniform": {"cell": {"probs": [1.0 / len(choices)] * len(choices)}},
        "matched": {"cell": {"probs": [p / sum(matched) for p in matched]}},
        "target": {"cell": {"choices": target, "probs": [1.0 / len(target)] * len(target)},
                   "n_objects": {"mean": 5.0, "std": 1.0}},
        "wide": wide_preset(s),
    }
