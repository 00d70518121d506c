"""The simulator's settings, its parameter space q_psi and the named presets.

Every knob of §5.1 of the AutoSimulate paper is a learnable distribution here, next to what
CLEVR's own generator randomises. Per-object quantities use ``repeat=MAX_OBJECTS``: each scene
draws ten i.i.d. values and the layout uses the first ``n_objects`` of them, so the score
function of a scene stays a plain sum over fixed-size latents.
"""

from __future__ import annotations

from typing import Any, Literal

from autosim_core import Bernoulli, Bounded, Categorical, LogNormal, Normal, ParameterSpace
from pydantic import BaseModel, ConfigDict, Field

from .scene import COLOURS, SHAPES, SIZES

MAX_OBJECTS = 10
OBJECT_COUNTS: list[int] = list(range(3, MAX_OBJECTS + 1))
IMAGE_SIZES: list[str] = ["64x64", "96x96", "120x80", "128x96", "160x120", "240x160", "320x240"]
"""Rendered sizes ``WxH``; 120x80 and 240x160 keep CLEVR's 3:2 frame."""
BOUNCES: list[int] = [0, 1, 2, 4]


class ClevrSettings(BaseModel):
    """``[simulator.settings]`` of the ``clevr`` simulator."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["fast", "cycles"] = Field(
        "fast", description="'fast': the built-in torch renderer; 'cycles': Blender/Cycles through bpy")
    output_size: tuple[int, int] = Field((64, 64), description="(H, W) every example is resized to")
    batch_size: int = Field(8, ge=1, description="scenes of one size rendered together by the fast backend")
    max_samples: int = Field(
        8, ge=1, description="cap on the fast backend's samples per pixel: its images are nearly converged at 8 "
        "(samples are stratified), and each sample costs as much as the first")
    device: str = Field("cpu", description="torch device of the fast backend")


def parse_size(text: str) -> tuple[int, int]:
    """``"WxH"`` → (width, height)."""
    w, _, h = str(text).partition("x")
    return int(w), int(h)


def _probs(choices: list[Any], favourite: Any, weight: float) -> list[float]:
    """A categorical that puts ``weight`` on one choice and spreads the rest evenly.

    Every probability stays > 0, as the core's Categorical requires, so a preset never
    rules a value out for the optimiser.
    """
    rest = (1.0 - weight) / (len(choices) - 1)
    return [weight if c == favourite else rest for c in choices]


def clevr_space() -> ParameterSpace:
    """The space at CLEVR's own defaults (the ``target`` preset spells them out again)."""
    n = MAX_OBJECTS
    return ParameterSpace(
        # lighting (1.0 = CLEVR's strength of each lamp)
        ambient=LogNormal(median=1.0, std=0.1, low=0.0, high=8.0),
        key_light=LogNormal(median=1.0, std=0.1, low=0.0, high=8.0),
        fill_light=LogNormal(median=1.0, std=0.1, low=0.0, high=8.0),
        back_light=LogNormal(median=1.0, std=0.1, low=0.0, high=8.0),
        light_jitter=Normal(mean=0.0, std=0.5, low=-3.0, high=3.0, repeat=9),
        # rendering quality
        samples=LogNormal(median=16, std=0.2, low=1, high=256, integer=True),
        bounces=Categorical(choices=BOUNCES, probs=_probs(BOUNCES, 2, 0.85)),
        image_size=Categorical(choices=IMAGE_SIZES, probs=_probs(IMAGE_SIZES, "120x80", 0.88)),
        camera_jitter=Normal(mean=0.0, std=0.3, low=-2.0, high=2.0, repeat=3),
        # scene content
        n_objects=Categorical(choices=OBJECT_COUNTS),
        shape=Categorical(choices=list(SHAPES), repeat=n),
        colour=Categorical(choices=list(COLOURS), repeat=n),
        size=Categorical(choices=list(SIZES), repeat=n),
        metal=Bernoulli(p=0.5, repeat=n),
        x=Normal(mean=0.0, std=1.8, low=-5.0, high=5.0, repeat=n),
        y=Normal(mean=0.0, std=1.8, low=-5.0, high=5.0, repeat=n),
        rotation=Bounded(low=0.0, high=360.0, mean=180.0, std=1.8, learn=False, repeat=n),
        min_dist=LogNormal(median=0.25, std=0.1, low=0.0, high=2.0),
    )


def _uniform(choices: list[Any]) -> list[float]:
    return [1.0 / len(choices)] * len(choices)


def wide_preset() -> dict[str, dict[str, Any]]:
    """Broad domain randomisation, set by hand from what each parameter means.

    Each Gaussian-latent parameter is centred in its plausible range (the log-centre for the
    log-normals) with a std that puts about 95 % of the draws inside that range (range / 3.92
    of the latent); every categorical choice and both materials are equally likely. The
    parameters the space already declares uniform (object count, shape, colour, size) and the
    fixed rotation are left as declared.
    """
    lamp = {"median": 1.0, "std": 1.0}  # about 1/8 to 8 times CLEVR's strength (the space's cap is 8)
    return {
        **{name: dict(lamp) for name in ("ambient", "key_light", "fill_light", "back_light")},
        "light_jitter": {"mean": 0.0, "std": 1.5},  # the declared [-3, 3]
        "camera_jitter": {"mean": 0.0, "std": 1.0},  # the declared [-2, 2]
        "samples": {"median": 16, "std": 1.4},  # 1 (grainy) to the declared 256
        "bounces": {"probs": _uniform(BOUNCES)},
        "image_size": {"probs": _uniform(IMAGE_SIZES)},
        "x": {"mean": 0.0, "std": 2.5},  # the whole declared floor, [-5, 5]
        "y": {"mean": 0.0, "std": 2.5},
        "metal": {"p": 0.5},
        # from nearly touching (1/16) to a gap of 1, more than a large object's radius (0.7)
        "min_dist": {"median": 0.25, "std": 0.7},
    }


def clevr_presets() -> dict[str, dict[str, dict[str, Any]]]:
    """``target``: CLEVR-like data (validation/test); ``initial``: a visibly wrong start;
    ``wide``: broad hand-set randomisation, the usual sim-to-real baseline (:func:`wide_preset`).

    The initial preset is off in every direction the optimiser can move: dim ambient and key
    with a glaring back light, one or two samples per pixel without bounces, square low-res
    frames, objects crowded towards one corner and mostly metal.
    """
    return {
        "target": {
            "ambient": {"median": 1.0, "std": 0.1},
            "key_light": {"median": 1.0, "std": 0.1},
            "fill_light": {"median": 1.0, "std": 0.1},
            "back_light": {"median": 1.0, "std": 0.1},
            "samples": {"median": 16, "std": 0.2},
            "bounces": {"probs": _probs(BOUNCES, 2, 0.85)},
            "image_size": {"probs": _probs(IMAGE_SIZES, "120x80", 0.88)},
            "x": {"mean": 0.0, "std": 1.8},
            "y": {"mean": 0.0, "std": 1.8},
            "metal": {"p": 0.5},
        },
        # Wider spreads than the target's: the score-function gradient learns from how the
        # rendered data vary within a batch, so the start explores around its wrong values.
        "initial": {
            "ambient": {"median": 0.15, "std": 0.4},
            "key_light": {"median": 0.35, "std": 0.4},
            "fill_light": {"median": 0.3, "std": 0.4},
            "back_light": {"median": 3.0, "std": 0.4},
            "samples": {"median": 1.5, "std": 0.5},
            "bounces": {"probs": _probs(BOUNCES, 0, 0.85)},
            "image_size": {"probs": _probs(IMAGE_SIZES, "64x64", 0.88)},
            "x": {"mean": -2.0, "std": 0.8},
            "y": {"mean": 2.0, "std": 0.8},
            "metal": {"p": 0.9},
        },
        "wide": wide_preset(),
    }
