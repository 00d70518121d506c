"""Rooms, their support surfaces and candidate locations, and the layout of one scene record.

The description here is backend-neutral: a :class:`SceneSpec` lists boxes (the room), placed
meshes (the objects), lights and a camera in metres, world z up. Both backends build exactly
this, so the Cycles and Arnold renders of a record show the same scene.

Each training room has three support surfaces; each surface holds three *locations*, regions
along its length. Location ``l`` lies on surface ``l // 3``, region ``l % 3``, and brings its
own camera: the elevation grows with the region (20, 45, 70 degrees: grazing, oblique, nearly
top-down) and the distance shrinks with the surface (the floor is seen from far, the third
surface from close up). A location therefore fixes how large objects appear, how much they
occlude each other and what lies behind them — the things a detector's training set must cover.

The ``target`` room (``workshop``) is held out: its own walls, a dark workbench, one warm lamp
and its own camera (elevation 62-78 degrees from 0.6-0.75 m, the objects large and seen from
above), rendered at high quality. The training cells that resemble it most are location 8 of
each room (70 degrees from the closest distance) and, next, locations 5 and 7; at high quality.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .meshes import Mesh

Vec3 = tuple[float, float, float]
RGB = tuple[float, float, float]

QUALITIES: dict[str, dict[str, Any]] = {
    # samples per pixel, bounces (every kind), OpenImageDenoise
    "low": {"samples": 4, "bounces": 1, "denoise": False},
    "high": {"samples": 16, "bounces": 3, "denoise": True},
}
ELEVATIONS = (20.0, 45.0, 70.0)  # degrees, by region within a surface
DISTANCES = (1.6, 1.1, 0.75)  # metres from the location's centre, by surface
FOV = 50.0  # horizontal, degrees


@dataclass(frozen=True)
class Material:
    rgb: RGB  # linear base colour
    metallic: float = 0.0
    roughness: float = 0.6


@dataclass(frozen=True)
class Block:
    """An axis-aligned box of the room (floor, wall, table top, counter, shelf board)."""

    name: str
    centre: Vec3
    size: Vec3
    material: Material

    @property
    def top(self) -> float:
        return self.centre[2] + self.size[2] / 2


@dataclass(frozen=True)
class Location:
    """A rectangle on a surface where objects stand, and the camera that looks at it."""

    surface: str
    centre: tuple[float, float]
    half: tuple[float, float]
    height: float  # the surface's top
    elevation: float  # degrees
    azimuth: float  # degrees, the camera's direction from the centre
    distance: float


@dataclass(frozen=True)
class Room:
    name: str
    blocks: list[Block]
    locations: list[Location]
    lamp: Vec3  # position of the room's area lamp
    lamp_power: float  # watts at light = 1
    lamp_rgb: RGB
    world_rgb: RGB
    world_strength: float


def _room(name: str, floor: Material, wall: Material, surfaces: list[tuple[str, Vec3, Vec3, Material]],
          lamp: Vec3, lamp_power: float, lamp_rgb: RGB, world_rgb: RGB, world_strength: float,
          elevations: tuple[float, ...] = ELEVATIONS, distances: tuple[float, ...] = DISTANCES) -> Room:
    blocks = [Block("floor", (0.0, 0.0, -0.05), (8.0, 8.0, 0.1), floor),
              Block("wall_back", (0.0, 2.0, 1.5), (8.0, 0.1, 3.0), wall),
              Block("wall_left", (-2.5, 0.0, 1.5), (0.1, 8.0, 3.0), wall)]
    locations = []
    for s, (surface, centre, size, material) in enumerate(surfaces):
        block = Block(surface, centre, size, material)
        if surface != "floor":
            blocks.append(block)
        top = 0.0 if surface == "floor" else block.top
        # Three regions along x, each inset from the edges so objects stay on the surface.
        third = size[0] / 3
        for j in range(3):
            cx = centre[0] - size[0] / 2 + third * (j + 0.5)
            half = (third / 2 - 0.01, size[1] / 2 - 0.02)
            locations.append(Location(surface, (cx, centre[1]), half, top, elevations[j % len(elevations)],
                                      -90.0 + 25.0 * (j - 1), distances[s % len(distances)]))
    return Room(name, blocks, locations, lamp, lamp_power, lamp_rgb, world_rgb, world_strength)


def _m(rgb: RGB, metallic: float = 0.0, roughness: float = 0.6) -> Material:
    return Material(rgb, metallic, roughness)


ROOMS: dict[str, Room] = {
    "kitchen": _room("kitchen", _m((0.35, 0.3, 0.25), roughness=0.4), _m((0.7, 0.7, 0.65)),
                     [("floor", (0.0, -1.5, 0.0), (1.2, 0.6, 0.0), _m((0.35, 0.3, 0.25))),
                      ("table", (0.0, -0.4, 0.375), (1.2, 0.7, 0.75), _m((0.45, 0.28, 0.15), roughness=0.5)),
                      ("counter", (0.0, 1.4, 0.45), (1.2, 0.6, 0.9), _m((0.8, 0.8, 0.8), roughness=0.15))],
                     lamp=(0.0, 0.0, 2.6), lamp_power=90.0, lamp_rgb=(1.0, 0.95, 0.9),
                     world_rgb=(0.8, 0.85, 1.0), world_strength=0.2),
    "office": _room("office", _m((0.2, 0.22, 0.3), roughness=0.9), _m((0.55, 0.6, 0.65)),
                    [("floor", (0.0, -1.5, 0.0), (1.2, 0.6, 0.0), _m((0.2, 0.22, 0.3), roughness=0.9)),
                     ("desk", (0.0, -0.4, 0.36), (1.2, 0.7, 0.72), _m((0.15, 0.15, 0.15), roughness=0.3)),
                     ("shelf", (0.0, 1.7, 1.2), (1.2, 0.45, 0.04), _m((0.6, 0.5, 0.35)))],
                    lamp=(0.5, 0.0, 2.6), lamp_power=80.0, lamp_rgb=(0.9, 0.95, 1.0),
                    world_rgb=(0.9, 0.9, 1.0), world_strength=0.15),
    "living": _room("living", _m((0.5, 0.35, 0.2), roughness=0.35), _m((0.75, 0.65, 0.55)),
                    [("floor", (0.0, -1.5, 0.0), (1.2, 0.6, 0.0), _m((0.5, 0.35, 0.2), roughness=0.35)),
                     ("coffee_table", (0.0, -0.4, 0.225), (1.2, 0.7, 0.45), _m((0.05, 0.05, 0.05), roughness=0.1)),
                     ("sideboard", (0.0, 1.6, 0.4), (1.2, 0.5, 0.8), _m((0.3, 0.18, 0.1), roughness=0.5))],
                    lamp=(-0.5, 0.0, 2.4), lamp_power=70.0, lamp_rgb=(1.0, 0.85, 0.7),
                    world_rgb=(1.0, 0.9, 0.8), world_strength=0.12),
}
TARGET_ROOM: Room = _room(
    "workshop", _m((0.25, 0.25, 0.25), roughness=0.8), _m((0.45, 0.5, 0.4)),
    [("floor", (0.0, -1.5, 0.0), (1.2, 0.6, 0.0), _m((0.25, 0.25, 0.25), roughness=0.8)),
     ("bench", (0.0, -0.4, 0.45), (1.2, 0.7, 0.9), _m((0.12, 0.1, 0.08), roughness=0.35)),
     ("cart", (0.0, 1.5, 0.6), (1.2, 0.5, 1.2), _m((0.35, 0.38, 0.4), metallic=0.6, roughness=0.4))],
    lamp=(0.3, -0.4, 1.9), lamp_power=35.0, lamp_rgb=(1.0, 0.8, 0.6), world_rgb=(0.6, 0.65, 0.8),
    world_strength=0.08, elevations=(62.0, 70.0, 78.0), distances=(0.75, 0.7, 0.6))
"""The held-out target domain; only its bench and cart locations (3-8) are used."""
TARGET_LOCATIONS = (3, 4, 5, 6, 7, 8)
ALL_ROOMS: dict[str, Room] = {**ROOMS, TARGET_ROOM.name: TARGET_ROOM}


def cell_name(room: str, location: int, quality: str) -> str:
    return f"{room}:{location}:{quality}"


def parse_cell(cell: str) -> tuple[Room, Location, int, str]:
    try:
        room_name, loc, quality = str(cell).split(":")
        room = ALL_ROOMS[room_name]
        index = int(loc)
        location = room.locations[index]
        if quality not in QUALITIES:
            raise KeyError(quality)
    except (ValueError, KeyError, IndexError):
        raise ValueError(f"cell {cell!r} is not ROOM:LOCATION:QUALITY with ROOM in {sorted(ALL_ROOMS)}, "
                         f"LOCATION in 0..8 and QUALITY in {sorted(QUALITIES)}") from None
    return room, location, index, quality


# ----------------------------------------------------------------------------- the spec ---
@dataclass(frozen=True)
class PlacedObject:
    category: str
    mesh: Mesh
    position: Vec3  # where the mesh's origin (the centre of its bottom) goes
    yaw: float  # radians about z
    scale: float
    material: Material

    def world_vertices(self) -> np.ndarray:
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        return self.mesh.vertices * self.scale @ rot.T + np.array(self.position)

    @property
    def radius(self) -> float:
        return self.mesh.footprint_radius * self.scale


@dataclass(frozen=True)
class Camera:
    position: Vec3
    look_at: Vec3
    fov: float  # horizontal, degrees


@dataclass(frozen=True)
class Lamp:
    position: Vec3
    size: float
    power: float  # watts
    rgb: RGB


@dataclass
class SceneSpec:
    id: Any
    seed: int
    room: str
    width: int
    height: int
    samples: int
    bounces: int
    denoise: bool
    camera: Camera
    lamp: Lamp
    world_rgb: RGB
    world_strength: float
    surface_height: float
    objects: list[PlacedObject] = field(default_factory=list)


def look_from(location: Location, distance: float, elevation: float, azimuth: float) -> Camera:
    e, a = math.radians(elevation), math.radians(azimuth)
    cx, cy = location.centre
    target = (cx, cy, location.height + 0.04)
    position = (cx + distance * math.cos(e) * math.cos(a), cy + distance * math.cos(e) * math.sin(a),
                target[2] + distance * math.sin(e))
    return Camera(position, target, FOV)


def place_objects(location: Location, count: int, meshes: dict[str, Mesh], rng: random.Random,
                  gap: float = 0.005, tries: int = 60) -> list[tuple[str, float, float, float, float]]:
    """Up to ``count`` (category, x, y, yaw, scale) inside the location, footprints disjoint.

    Each footprint is the circle about the object's axis that holds it, so circles kept
    ``gap`` apart never intersect; an object that finds no free spot in ``tries`` draws is left out.
    """
    names = sorted(meshes)
    placed: list[tuple[str, float, float, float, float, float]] = []
    for _ in range(count):
        category = names[rng.randrange(len(names))]
        scale = rng.uniform(0.9, 1.1)
        radius = meshes[category].footprint_radius * scale
        yaw = rng.uniform(0.0, 2 * math.pi)
        hx, hy = location.half
        for _ in range(tries):
            # The whole footprint stays inside the region, hence on the surface.
            x = location.centre[0] + rng.uniform(-1.0, 1.0) * max(hx - radius, 0.0)
            y = location.centre[1] + rng.uniform(-1.0, 1.0) * max(hy - radius, 0.0)
            if all(math.hypot(x - px, y - py) >= radius + pr + gap for _, px, py, _, _, pr in placed):
                placed.append((category, x, y, yaw, scale, radius))
                break
    return [(c, x, y, yaw, s) for c, x, y, yaw, s, _ in placed]


def object_material(category: str, rng: random.Random) -> Material:
    """Each class's look, with a per-object colour jitter; cans and tools are metal, mugs glossy."""
    base = {"can": ((0.7, 0.7, 0.72), 1.0, 0.25), "box": ((0.6, 0.15, 0.08), 0.0, 0.8),
            "bottle": ((0.1, 0.35, 0.12), 0.0, 0.1), "mug": ((0.8, 0.8, 0.75), 0.0, 0.15),
            "tool": ((0.8, 0.6, 0.1), 0.5, 0.3), "duck": ((0.9, 0.75, 0.05), 0.0, 0.5)}
    rgb, metallic, roughness = base.get(category, ((0.5, 0.5, 0.5), 0.0, 0.5))
    if category not in base:  # BOP models: a colour from the name, so every instance of it agrees
        h = sum(map(ord, category))
        rgb = (0.2 + (h % 7) / 10, 0.2 + (h % 5) / 7, 0.2 + (h % 3) / 4)
        metallic, roughness = float(h % 4 == 0), 0.3 + (h % 5) / 10
    jitter = [rng.uniform(0.8, 1.2) for _ in range(3)]
    return Material(tuple(min(1.0, c * j) for c, j in zip(rgb, jitter, strict=True)), metallic,  # type: ignore[arg-type]
                    min(1.0, max(0.05, roughness + rng.uniform(-0.05, 0.05))))


def layout(record: dict[str, Any], meshes: dict[str, Mesh], image_size: int) -> SceneSpec:
    """The scene of one record: cell, n_objects, light, camera_distance, seed (and id)."""
    room, location, _, quality = parse_cell(record["cell"])
    seed = int(record.get("seed", 0))
    n = int(record.get("n_objects", 4))
    light = float(record.get("light", 1.0))
    distance_scale = float(record.get("camera_distance", 1.0))
    if n < 0 or light < 0 or distance_scale <= 0:
        raise ValueError(f"scene {record.get('id')!r}: n_objects, light must be >= 0 and camera_distance > 0")
    rng = random.Random(seed)
    q = QUALITIES[quality]
    camera = look_from(location, location.distance * distance_scale, location.elevation + rng.uniform(-5, 5),
                       location.azimuth + rng.uniform(-20, 20))
    objects = []
    for category, x, y, yaw, scale in place_objects(location, n, meshes, rng):
        objects.append(PlacedObject(category, meshes[category], (x, y, location.height), yaw, scale,
                                    object_material(category, rng)))
    return SceneSpec(
        id=record.get("id"), seed=seed, room=room.name, width=image_size, height=image_size,
        samples=q["samples"], bounces=q["bounces"], denoise=q["denoise"], camera=camera,
        lamp=Lamp(room.lamp, 0.8, room.lamp_power * light, room.lamp_rgb), world_rgb=room.world_rgb,
        world_strength=room.world_strength * light, surface_height=location.height, objects=objects)
