"""The ``shapes`` simulator: coloured circles, squares and triangles on textured backgrounds.

A small, fast and deterministic detection renderer (torch only) for tests and for a demo in
which AutoSimulate must beat a fixed distribution. Every scene has up to ``MAX_OBJECTS``
objects with known classes and boxes; later objects occlude earlier ones.

The space's default is the ``initial`` preset, a visibly poor start: one or two small, greyish,
dim objects on flat dark backgrounds without noise. ``target`` is the "real" domain: three to
five medium, saturated objects on cluttered textured backgrounds of mid brightness, with some
sensor noise. A detector trained on ``initial`` learns "a bright blob on a flat field" and
transfers badly; moving q_psi towards ``target`` fixes that.

A scene record holds per-scene values plus per-object lists (``repeat=MAX_OBJECTS``, of which
the first ``n_objects`` are used, as the CLEVR simulator does). What the record leaves open
(positions, rotations, hues, texture phases, noise) comes from ``scene["seed"]``; each object's
random numbers are drawn before anything else and for all ``MAX_OBJECTS`` slots, so object
``i`` lands in the same place whatever ``n_objects`` is.
"""

from __future__ import annotations

import colorsys
import math
import numbers
from dataclasses import dataclass
from typing import Any

import torch
from autosim_core import Bounded, Categorical, Example, LogNormal, ParameterSpace, hookimpl
from pydantic import BaseModel, ConfigDict, Field

from .settings import SHAPE_CLASSES

MAX_OBJECTS = 6
OBJECT_COUNTS: list[int] = list(range(1, MAX_OBJECTS + 1))
BACKGROUNDS: list[str] = ["flat", "noise", "stripes", "checker"]
CLASS_ID: dict[str, int] = {name: i + 1 for i, name in enumerate(SHAPE_CLASSES)}
"""Mask value of each class: 1 + its index in ``SHAPE_CLASSES`` (0 is background)."""

# Circumradius per unit of "size radius": every shape of one size has the area of the circle of
# that diameter, so size means the same amount of evidence for each class.
_SQUARE_HALF = math.sqrt(math.pi) / 2  # half side of the square of area pi
_TRIANGLE_INRADIUS = math.sqrt(math.pi / (3 * math.sqrt(3)))  # equilateral triangle of area pi
_CIRCUMRADIUS = {"circle": 1.0, "square": _SQUARE_HALF * math.sqrt(2), "triangle": 2 * _TRIANGLE_INRADIUS}
_OBJECT_DRAWS = 6  # uniforms per object slot: x, y, rotation, hue, value, shading direction
_MAX_SIZE = 0.6  # the largest triangle (circumradius 1.56 r) still fits inside the frame


class ShapesSettings(BaseModel):
    """``[simulator.settings]`` of the ``shapes`` simulator."""

    model_config = ConfigDict(extra="forbid")

    image_size: int = Field(128, ge=16, le=2048, description="side of the square images, in pixels")


def _probs(weights: list[float]) -> list[float]:
    total = sum(weights)
    return [w / total for w in weights]


INITIAL: dict[str, dict[str, Any]] = {
    "n_objects": {"probs": _probs([55, 25, 8, 5, 4, 3])},
    "size": {"median": 0.07, "std": 0.25},
    "saturation": {"mean": 0.2, "std": 0.6},
    "light": {"median": 0.6, "std": 0.2},
    "background": {"probs": [0.85, 0.05, 0.05, 0.05]},
    "texture_contrast": {"mean": 0.08, "std": 0.6},
    "background_brightness": {"mean": 0.15, "std": 0.6},
    "noise": {"mean": 0.005, "std": 0.6},
}
TARGET: dict[str, dict[str, Any]] = {
    "n_objects": {"probs": _probs([5, 15, 25, 25, 20, 10])},
    "size": {"median": 0.2, "std": 0.3},
    "saturation": {"mean": 0.75, "std": 0.4},
    "light": {"median": 1.0, "std": 0.1},
    "background": {"probs": [0.1, 0.3, 0.3, 0.3]},
    "texture_contrast": {"mean": 0.45, "std": 0.4},
    "background_brightness": {"mean": 0.5, "std": 0.4},
    "noise": {"mean": 0.04, "std": 0.4},
}


def shapes_space() -> ParameterSpace:
    """The space at the ``initial`` values (the preset spells them out again).

    Sizes are object diameters as fractions of the image side; the ``Bounded`` stds are
    spreads of the latent logit.
    """
    i = INITIAL
    return ParameterSpace(
        n_objects=Categorical(choices=list(OBJECT_COUNTS), probs=i["n_objects"]["probs"]),
        shape=Categorical(choices=list(SHAPE_CLASSES), repeat=MAX_OBJECTS, learn=False),
        size=LogNormal(median=i["size"]["median"], std=i["size"]["std"], low=0.03, high=_MAX_SIZE,
                       repeat=MAX_OBJECTS),
        saturation=Bounded(low=0.0, high=1.0, **i["saturation"]),
        light=LogNormal(median=i["light"]["median"], std=i["light"]["std"], low=0.2, high=3.0),
        background=Categorical(choices=list(BACKGROUNDS), probs=i["background"]["probs"]),
        texture_contrast=Bounded(low=0.0, high=1.0, **i["texture_contrast"]),
        background_brightness=Bounded(low=0.0, high=1.0, **i["background_brightness"]),
        noise=Bounded(low=0.0, high=0.15, **i["noise"]),
    )


def shapes_presets() -> dict[str, dict[str, dict[str, Any]]]:
    return {"initial": {k: dict(v) for k, v in INITIAL.items()}, "target": {k: dict(v) for k, v in TARGET.items()}}


# ------------------------------------------------------------------------------ records ---
@dataclass(frozen=True)
class _Scene:
    shapes: list[str]
    sizes: list[float]
    saturation: float
    light: float
    background: str
    texture_contrast: float
    background_brightness: float
    noise: float
    seed: int


def _per_object(scene: dict[str, Any], key: str, n: int) -> list[Any]:
    value = scene[key]
    values = list(value) if isinstance(value, list | tuple) else [value] * n
    if len(values) < n:
        raise ValueError(f"{key} has {len(values)} values for {n} objects")
    return values[:n]


def _number(scene: dict[str, Any], key: str, low: float, high: float) -> float:
    value = scene[key]
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{key} = {value!r} is not a number")
    if not low <= value <= high:  # also rejects NaN
        raise ValueError(f"{key} = {value!r} lies outside [{low}, {high}]")
    return float(value)


def parse_scene(scene: dict[str, Any]) -> _Scene:
    """The record's values, checked; a ValueError names the scene and the bad value."""
    try:
        n = scene["n_objects"]
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 0 <= n <= MAX_OBJECTS:
            raise ValueError(f"n_objects = {n!r} must be an integer in [0, {MAX_OBJECTS}]")
        n = int(n)
        shapes = [str(s) for s in _per_object(scene, "shape", n)]
        unknown = sorted(set(shapes) - set(SHAPE_CLASSES))
        if unknown:
            raise ValueError(f"unknown shape(s) {unknown}; allowed: {SHAPE_CLASSES}")
        sizes = [float(s) for s in _per_object(scene, "size", n)]
        if not all(0 < s <= _MAX_SIZE for s in sizes):
            raise ValueError(f"size values {sizes} must lie in (0, {_MAX_SIZE}]")
        background = scene["background"]
        if background not in BACKGROUNDS:
            raise ValueError(f"background = {background!r}; allowed: {BACKGROUNDS}")
        seed = scene["seed"]
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise ValueError(f"seed = {seed!r} is not an integer")
        return _Scene(
            shapes=shapes, sizes=sizes, background=background, seed=int(seed),
            saturation=_number(scene, "saturation", 0.0, 1.0),
            light=_number(scene, "light", 0.0, 10.0),
            texture_contrast=_number(scene, "texture_contrast", 0.0, 2.0),
            background_brightness=_number(scene, "background_brightness", 0.0, 1.0),
            noise=_number(scene, "noise", 0.0, 1.0),
        )
    except KeyError as err:
        raise ValueError(f"shapes scene {scene.get('id')!r}: missing value {err.args[0]!r}") from None
    except (ValueError, TypeError) as err:
        raise ValueError(f"shapes scene {scene.get('id')!r}: {err}") from None


# ------------------------------------------------------------------------------ drawing ---
def _inside(shape: str, x: torch.Tensor, y: torch.Tensor, radius: float, angle: float) -> torch.Tensor:
    """Pixels (centres at offsets x (1, W), y (H, 1) from the object's centre) inside the shape."""
    if shape == "circle":
        return x * x + y * y <= radius * radius
    c, s = math.cos(angle), math.sin(angle)
    if shape == "square":
        half = radius * _SQUARE_HALF
        return ((x * c + y * s).abs() <= half) & ((y * c - x * s).abs() <= half)
    # An equilateral triangle is where three half-planes with normals 120 degrees apart meet.
    inradius = radius * _TRIANGLE_INRADIUS
    inside = x * c + y * s <= inradius
    for k in (1, 2):
        a = angle + k * 2 * math.pi / 3
        inside = inside & (x * math.cos(a) + y * math.sin(a) <= inradius)
    return inside


def _texture(kind: str, size: int, coords: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A zero-centred pattern in [-1, 1] of shape (1 or 3, S, S)."""
    u = torch.rand(3, generator=g).tolist()
    if kind == "flat":
        return torch.zeros(1, size, size)
    if kind == "noise":
        # Value noise in two octaves, partly per channel so the clutter is coloured.
        k = 3 + int(u[0] * 6)
        shared = torch.rand(1, 1, k, k, generator=g).expand(1, 3, k, k)
        coarse = shared * 0.6 + torch.rand(1, 3, k, k, generator=g) * 0.4
        fine = torch.rand(1, 1, 3 * k, 3 * k, generator=g)
        t = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
        t = t + 0.5 * torch.nn.functional.interpolate(fine, size=(size, size), mode="bilinear", align_corners=False)
        t = t[0] - t.mean()
        return t / t.abs().amax().clamp_min(1e-6)
    angle = u[1] * math.pi
    c, s = math.cos(angle), math.sin(angle)
    x, y = coords[None, :], coords[:, None]
    a, b = x * c + y * s, y * c - x * s
    if kind == "stripes":
        period = size * (0.05 + 0.15 * u[0])
        return torch.sin(a * (2 * math.pi / period) + 2 * math.pi * u[2])[None]
    cell = size * (0.04 + 0.12 * u[0])
    return torch.sign(torch.sin(a * (math.pi / cell) + math.pi * u[2]) * torch.sin(b * (math.pi / cell)))[None]


def draw(scene: _Scene, size: int) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, Any]]]:
    """The image (3, S, S), the object-index map (S, S; 0 = background, i + 1 = object i) and the
    objects with their full (unoccluded) pixel counts and windows."""
    g = torch.Generator().manual_seed(scene.seed)
    draws = torch.rand(MAX_OBJECTS, _OBJECT_DRAWS, generator=g, dtype=torch.float64).tolist()
    coords = torch.arange(size, dtype=torch.float32) + 0.5

    tint = (0.75 + 0.5 * torch.rand(3, generator=g)).tolist()
    accent = (0.4 + 0.8 * torch.rand(3, generator=g))[:, None, None]
    pattern = _texture(scene.background, size, coords, g)
    base = torch.tensor([scene.background_brightness * t for t in tint])[:, None, None]
    image = (base + (0.5 * scene.texture_contrast) * pattern * accent).expand(3, size, size).contiguous()
    index = torch.zeros(size, size, dtype=torch.int64)

    objects: list[dict[str, Any]] = []
    for i, (shape, diameter) in enumerate(zip(scene.shapes, scene.sizes, strict=True)):
        ux, uy, urot, hue, value, ushade = draws[i]
        radius = diameter * size / 2
        reach = radius * _CIRCUMRADIUS[shape]
        cx = reach + ux * max(size - 2 * reach, 0.0)
        cy = reach + uy * max(size - 2 * reach, 0.0)
        x0, x1 = max(math.floor(cx - reach), 0), min(math.ceil(cx + reach) + 1, size)
        y0, y1 = max(math.floor(cy - reach), 0), min(math.ceil(cy + reach) + 1, size)
        dx, dy = coords[x0:x1][None, :] - cx, coords[y0:y1][:, None] - cy
        angle = urot * 2 * math.pi
        inside = _inside(shape, dx, dy, radius, angle)
        colour = colorsys.hsv_to_rgb(hue, scene.saturation, 0.45 + 0.55 * value)
        # A soft linear shading gives the flat shapes a lit side and a shadowed side.
        sa = ushade * 2 * math.pi
        shade = 1.0 + 0.2 * (dx * math.cos(sa) + dy * math.sin(sa)) / max(reach, 1e-6)
        fill = torch.tensor(colour)[:, None, None] * shade
        window = image[:, y0:y1, x0:x1]
        window.copy_(torch.where(inside, fill, window))
        index[y0:y1, x0:x1].masked_fill_(inside, i + 1)
        objects.append({"category": shape, "colour": [float(c) for c in colour], "size": diameter * size,
                        "centre": [cx, cy], "rotation": math.degrees(angle) % 360.0,
                        "pixels": int(inside.sum()), "window": (x0, y0, x1, y1)})

    image = image * scene.light
    if scene.noise > 0:
        image = image + scene.noise * torch.randn(3, size, size, generator=g)
    return image.clamp_(0.0, 1.0), index, objects


def visible_objects(index: torch.Tensor, objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Objects with some visible pixel: box from the visible pixels (x1, y1 exclusive) and the
    fraction of their full shape that shows."""
    out = []
    for i, obj in enumerate(objects):
        x0, y0, x1, y1 = obj.pop("window")
        full = obj.pop("pixels")
        visible = index[y0:y1, x0:x1] == i + 1
        count = int(visible.sum())
        if count == 0:
            continue
        rows = visible.any(dim=1).nonzero()
        cols = visible.any(dim=0).nonzero()
        box = [float(x0 + cols[0]), float(y0 + rows[0]), float(x0 + cols[-1] + 1), float(y0 + rows[-1] + 1)]
        out.append({**obj, "box": box, "visible_fraction": count / full})
    return out


def render_scene(record: dict[str, Any], size: int) -> Example:
    """One record as an example: mask = 1 + class index per pixel; each visible object has
    ``category``, ``box`` [x0, y0, x1, y1] (pixels, x1/y1 exclusive), ``visible_fraction``,
    ``colour`` (RGB before lighting), ``size`` (diameter of the equal-area circle, pixels),
    ``centre`` and ``rotation`` (degrees)."""
    scene = parse_scene(record)
    image, index, objects = draw(scene, size)
    lookup = torch.tensor([0] + [CLASS_ID[s] for s in scene.shapes], dtype=torch.int64)
    return Example(image=image, mask=lookup[index], objects=visible_objects(index, objects), scene=record)


def as_settings(settings: Any) -> ShapesSettings:
    if isinstance(settings, ShapesSettings):
        return settings
    return ShapesSettings.model_validate(settings or {})


class ShapesSimulator:
    @hookimpl
    def simulator_settings_model(self) -> type[BaseModel]:
        return ShapesSettings

    @hookimpl
    def labels(self) -> list[str]:
        """Mask id i + 1 and object category ``SHAPE_CLASSES[i]``."""
        return list(SHAPE_CLASSES)

    @hookimpl
    def parameter_space(self) -> ParameterSpace:
        return shapes_space()

    @hookimpl
    def presets(self) -> dict[str, dict[str, dict[str, Any]]]:
        return shapes_presets()

    @hookimpl
    def render(self, scenes: list[dict[str, Any]], settings: Any) -> list[Example]:
        size = as_settings(settings).image_size
        return [render_scene(scene, size) for scene in scenes]


shapes_simulator = ShapesSimulator()
