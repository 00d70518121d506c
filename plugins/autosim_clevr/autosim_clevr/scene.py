"""The 3-D scene both backends render: everything geometric is decided here, once.

Conventions (both backends follow them, so their masks agree):
- world: z up, ground plane z = 0, infinite, grey; units as in CLEVR.
- objects stand on the ground: a sphere of radius r has its centre at z = r; a cube has
  half-extent r (side 2r), rotated by ``rotation`` degrees about the vertical axis through
  its centre (x, y, r); a cylinder has radius r and height 2r, axis vertical, base on z = 0.
- camera: pinhole at ``position`` looking at ``look_at`` with world z as up; ``fov`` is the
  *horizontal* field of view in degrees; pixel (row i, column j) is sampled around its centre
  (j + 0.5, i + 0.5); row 0 is the top of the image.
- lights are point lights at a position with an intensity (1.0 = CLEVR's default strength);
  ``ambient`` is a uniform environment light.
- class ids of the mask: 0 background (ground and sky), 1 sphere, 2 cube, 3 cylinder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Vec3 = tuple[float, float, float]
Shape = Literal["sphere", "cube", "cylinder"]
CLASSES: tuple[str, ...] = ("background", "sphere", "cube", "cylinder")
SHAPES: tuple[Shape, ...] = ("sphere", "cube", "cylinder")
CLASS_ID = {name: i for i, name in enumerate(CLASSES)}

# CLEVR's colours (sRGB 0..255) and sizes (radius r in world units).
COLOURS: dict[str, tuple[int, int, int]] = {
    "gray": (87, 87, 87), "red": (173, 35, 35), "blue": (42, 75, 215), "green": (29, 105, 20),
    "brown": (129, 74, 25), "purple": (129, 38, 192), "cyan": (41, 208, 208), "yellow": (255, 238, 51),
}
SIZES: dict[str, float] = {"large": 0.7, "small": 0.35}
MATERIALS: tuple[str, ...] = ("rubber", "metal")


@dataclass
class Camera:
    position: Vec3
    look_at: Vec3 = (0.0, 0.0, 0.0)
    fov: float = 49.9


@dataclass
class Light:
    name: str
    position: Vec3
    intensity: float


@dataclass
class SceneObject:
    shape: Shape
    colour: str
    material: str
    size: str
    x: float
    y: float
    rotation: float = 0.0

    @property
    def radius(self) -> float:
        return SIZES[self.size]

    @property
    def rgb(self) -> tuple[float, float, float]:
        r, g, b = COLOURS[self.colour]
        return (r / 255.0, g / 255.0, b / 255.0)


@dataclass
class Scene3D:
    id: object
    seed: int
    width: int
    height: int
    samples: int
    bounces: int
    camera: Camera
    lights: list[Light]
    ambient: float
    objects: list[SceneObject] = field(default_factory=list)
