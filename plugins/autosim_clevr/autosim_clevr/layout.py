"""From a sampled record (plain values from q_psi) to the 3-D scene both backends render.

All the scene's geometry is decided here, once, so that the fast and the Cycles backends
draw the same objects at the same places.

Minimum distance. CLEVR's generator rejects an object whose gap to an earlier one (centre
distance minus both radii) is below ``min_dist`` and draws it again. Here the object's own
sampled position is tried first; if it is too close, it is nudged up to ``NUDGES`` times by
Gaussian steps of growing size from a generator seeded by the scene's seed (so the layout is
a deterministic function of the record), and dropped if every try fails. Crowded
distributions therefore lose objects, as CLEVR's retries would eventually give up too.
"""

from __future__ import annotations

import math
import random
from typing import Any

from .params import parse_size
from .scene import SIZES, Camera, Light, Scene3D, SceneObject

# CLEVR's base scene (data/base_scene.blend): camera and the three area lamps.
CAMERA_POSITION = (7.3589, -6.9258, 4.9583)
LIGHT_POSITIONS: dict[str, tuple[float, float, float]] = {
    "key": (6.4467, -2.9052, 4.2584),
    "fill": (-4.6711, -4.0136, 3.0112),
    "back": (-1.1685, 2.6460, 5.8156),
}
NUDGES = 8
NUDGE_STEP = 0.4
MIN_LIGHT_HEIGHT = 0.5


def gap(a: SceneObject, b: SceneObject) -> float:
    """Free space between two objects' footprints (CLEVR's distance test)."""
    return math.hypot(a.x - b.x, a.y - b.y) - a.radius - b.radius


def place_objects(candidates: list[SceneObject], min_dist: float, seed: int) -> list[SceneObject]:
    """Keep the candidates in order, nudging or dropping those closer than ``min_dist``."""
    rng = random.Random(seed)
    placed: list[SceneObject] = []
    for obj in candidates:
        x0, y0 = obj.x, obj.y
        for attempt in range(NUDGES + 1):
            if attempt:
                step = NUDGE_STEP * attempt
                obj.x, obj.y = x0 + rng.gauss(0.0, step), y0 + rng.gauss(0.0, step)
            if all(gap(obj, other) >= min_dist for other in placed):
                placed.append(obj)
                break
    return placed


def _as_list(value: Any, n: int) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value] * n


def layout(record: dict[str, Any]) -> Scene3D:
    """The scene a record describes; raises ValueError naming the field that is unusable."""
    seed = int(record.get("seed", 0))
    width, height = parse_size(record["image_size"])
    n = int(record["n_objects"])
    fields = ("shape", "colour", "size", "metal", "x", "y", "rotation")
    columns = {f: _as_list(record[f], n) for f in fields}
    for f, col in columns.items():
        if len(col) < n:
            raise ValueError(f"{f} has {len(col)} values for {n} objects")
    candidates = [
        SceneObject(shape=columns["shape"][k], colour=columns["colour"][k], size=columns["size"][k],
                    material="metal" if columns["metal"][k] else "rubber",
                    x=float(columns["x"][k]), y=float(columns["y"][k]),
                    rotation=float(columns["rotation"][k]))
        for k in range(n)
    ]
    for obj in candidates:
        if obj.size not in SIZES:
            raise ValueError(f"unknown size {obj.size!r}")
    objects = place_objects(candidates, float(record["min_dist"]), seed)

    cj = _as_list(record.get("camera_jitter", 0.0), 3)
    camera = Camera(position=(CAMERA_POSITION[0] + cj[0], CAMERA_POSITION[1] + cj[1], CAMERA_POSITION[2] + cj[2]))
    lj = _as_list(record.get("light_jitter", 0.0), 9)
    lights = []
    for i, (name, pos) in enumerate(LIGHT_POSITIONS.items()):
        jx, jy, jz = lj[3 * i: 3 * i + 3]
        lights.append(Light(name=name, position=(pos[0] + jx, pos[1] + jy, max(pos[2] + jz, MIN_LIGHT_HEIGHT)),
                            intensity=float(record[f"{name}_light"])))
    return Scene3D(id=record.get("id"), seed=seed, width=width, height=height,
                   samples=int(record["samples"]), bounces=int(record["bounces"]), camera=camera,
                   lights=lights, ambient=float(record["ambient"]), objects=objects)
