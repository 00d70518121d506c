"""The ``cycles`` backend: :class:`~autosim_arnold.scene.SceneSpec` rendered by Blender Cycles (CPU).

Blender holds one scene per process, built on first use and kept: every room's blocks (hidden
unless their room is rendered), one camera, one area lamp, and a pool of ``MAX_OBJECTS`` object
slots, each with its own material, whose mesh data is swapped per image. Per image only what
changes is set: render settings, the visible room, camera, lamp, sky, and each slot's mesh,
transform and material values; so the cost per image is Cycles' own plus a few milliseconds.

Passes come back through a file, as from a plain ``render(write_still=True)``: the combined pass
and the object-index pass (slot ``i`` has pass index ``i + 1``, the room 0) in one uncompressed
multi-part float OpenEXR in a private temporary folder, parsed with numpy (:mod:`.exr`); bpy
5.0's ``Render Result`` has no readable pixels, and neither a compositor nor loading the file
as a Blender image is needed. ``bpy`` is imported only here, lazily.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .exr import read_exr
from .meshes import Mesh
from .params import MAX_OBJECTS
from .scene import ALL_ROOMS, Material, SceneSpec

_SEED_MAX = 2**31 - 1


@dataclass
class _Stage:
    scene: Any
    camera: Any
    lamp: Any
    sky: Any
    outdir: Path
    rooms: dict[str, list[Any]]
    slots: list[Any]
    slot_bsdfs: list[Any]
    meshes: dict[int, Any] = field(default_factory=dict)  # id(Mesh) -> bpy mesh
    shown_room: str | None = None


_STAGE: _Stage | None = None
_PID: int | None = None


def _bpy() -> Any:
    try:
        import bpy
    except ImportError as err:
        raise ImportError(f"the cycles backend needs Blender's Python module: pip install "
                          f"'autosim-arnold[blender]' ({err})") from err
    return bpy


def stage() -> _Stage:
    """The process's Blender scene, built on first use."""
    global _STAGE, _PID
    if _PID is not None and _PID != os.getpid():
        raise RuntimeError("Blender was loaded in a parent process; a forked child hangs in its first render. "
                           "Use worker processes started with 'spawn' or 'forkserver'.")
    bpy = _bpy()
    _PID = os.getpid()
    if _STAGE is not None:
        try:
            _STAGE.scene.name  # noqa: B018 - raises ReferenceError once Blender's data was reset
        except ReferenceError:
            _STAGE = None
    if _STAGE is None:
        _STAGE = _build_stage(bpy)
    return _STAGE


def linear_rgb(material: Material) -> tuple[float, float, float, float]:
    return (*material.rgb, 1.0)


def _principled(bpy: Any, name: str, material: Material) -> tuple[Any, Any]:
    mat = bpy.data.materials.new(name)
    bsdf = next(n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    _set_material(bsdf, material)
    return mat, bsdf


def _set_material(bsdf: Any, material: Material) -> None:
    bsdf.inputs["Base Color"].default_value = linear_rgb(material)
    bsdf.inputs["Metallic"].default_value = material.metallic
    bsdf.inputs["Roughness"].default_value = material.roughness


def mesh_data(bpy: Any, name: str, mesh: Mesh) -> Any:
    data = bpy.data.meshes.new(name)
    data.from_pydata(mesh.vertices.tolist(), [], mesh.faces.tolist())
    data.update()
    return data


def _build_stage(bpy: Any) -> _Stage:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    cycles = scene.cycles
    cycles.device = "CPU"
    cycles.use_adaptive_sampling = False  # the quality's sample count is what is rendered
    cycles.use_animated_seed = False
    cycles.denoiser = "OPENIMAGEDENOISE"
    cycles.use_light_tree = False  # one lamp and a sky: the tree only costs time
    scene.render.resolution_percentage = 100
    scene.render.use_compositing = False
    scene.render.use_sequencer = False
    scene.view_settings.view_transform = "Standard"
    layer = scene.view_layers[0]
    layer.use_pass_combined = True
    layer.use_pass_object_index = True

    cam = bpy.data.cameras.new("camera")
    cam.sensor_fit = "HORIZONTAL"
    cam.sensor_width = 36.0
    cam.clip_start = 0.02
    cam.clip_end = 50.0
    camera = bpy.data.objects.new("camera", cam)
    scene.collection.objects.link(camera)
    scene.camera = camera

    light = bpy.data.lights.new("lamp", "AREA")
    lamp = bpy.data.objects.new("lamp", light)
    scene.collection.objects.link(lamp)  # an area light faces -z: straight down, as a ceiling lamp

    world = bpy.data.worlds.new("sky")
    scene.world = world
    sky = next(n for n in world.node_tree.nodes if n.type == "BACKGROUND")

    rooms: dict[str, list[Any]] = {}
    for room in ALL_ROOMS.values():
        objs = []
        for block in room.blocks:
            box = _box_mesh(block.size)
            ob = bpy.data.objects.new(f"{room.name}_{block.name}", mesh_data(bpy, f"{room.name}_{block.name}", box))
            ob.location = block.centre
            ob.data.materials.append(_principled(bpy, f"{room.name}_{block.name}", block.material)[0])
            ob.pass_index = 0
            ob.hide_render = True
            scene.collection.objects.link(ob)
            objs.append(ob)
        rooms[room.name] = objs

    placeholder = bpy.data.meshes.new("empty")
    slots, bsdfs = [], []
    for i in range(MAX_OBJECTS):
        ob = bpy.data.objects.new(f"slot_{i}", placeholder)
        mat, bsdf = _principled(bpy, f"slot_{i}", Material((0.5, 0.5, 0.5)))
        ob.data.materials.clear()
        ob.pass_index = i + 1
        ob.hide_render = True
        scene.collection.objects.link(ob)
        ob.active_material_index = 0
        slots.append((ob, mat))
        bsdfs.append(bsdf)

    outdir = Path(tempfile.mkdtemp(prefix="autosim_arnold_"))
    atexit.register(shutil.rmtree, outdir, True)
    image = scene.render.image_settings
    image.media_type = "MULTI_LAYER_IMAGE"
    image.file_format = "OPEN_EXR_MULTILAYER"
    image.color_depth = "32"
    image.exr_codec = "NONE"  # the file lives a few milliseconds; compressing it is waste
    scene.render.filepath = str(outdir / "render.exr")
    return _Stage(scene, camera, lamp, sky, outdir, rooms, slots, bsdfs)


def _box_mesh(size: tuple[float, float, float]) -> Mesh:
    from .meshes import box

    return box(*size)


def _object_mesh(bpy: Any, st: _Stage, category: str, mesh: Mesh) -> Any:
    key = id(mesh)
    if key not in st.meshes:
        data = mesh_data(bpy, f"mesh_{category}", mesh)
        data.materials.append(None)  # one slot, linked per object
        st.meshes[key] = (data, mesh)  # the Mesh is kept alive so its id stays unique
    return st.meshes[key][0]


def apply(spec: SceneSpec) -> _Stage:
    """Set the stage to ``spec`` (everything that changes from one image to the next)."""
    from mathutils import Vector

    bpy = _bpy()
    st = stage()
    if len(spec.objects) > MAX_OBJECTS:
        raise ValueError(f"{len(spec.objects)} objects; at most {MAX_OBJECTS}")
    scene = st.scene
    scene.render.resolution_x = spec.width
    scene.render.resolution_y = spec.height
    scene.cycles.samples = spec.samples
    for name in ("max_bounces", "diffuse_bounces", "glossy_bounces", "transmission_bounces"):
        setattr(scene.cycles, name, spec.bounces)
    scene.cycles.use_denoising = spec.denoise
    scene.cycles.seed = spec.seed % _SEED_MAX
    if st.shown_room != spec.room:
        for name, objs in st.rooms.items():
            for ob in objs:
                ob.hide_render = name != spec.room
        st.shown_room = spec.room

    cam = spec.camera
    position = Vector(cam.position)
    st.camera.location = position
    st.camera.rotation_mode = "QUATERNION"
    st.camera.rotation_quaternion = (Vector(cam.look_at) - position).to_track_quat("-Z", "Y")
    st.camera.data.lens = st.camera.data.sensor_width / (2.0 * math.tan(math.radians(cam.fov) / 2.0))

    st.lamp.location = spec.lamp.position
    st.lamp.data.size = spec.lamp.size
    st.lamp.data.energy = spec.lamp.power
    st.lamp.data.color = spec.lamp.rgb
    st.sky.inputs["Color"].default_value = (*spec.world_rgb, 1.0)
    st.sky.inputs["Strength"].default_value = spec.world_strength

    for i, (ob, mat) in enumerate(st.slots):
        if i >= len(spec.objects):
            ob.hide_render = True
            continue
        obj = spec.objects[i]
        ob.data = _object_mesh(bpy, st, obj.category, obj.mesh)
        ob.material_slots[0].link = "OBJECT"
        ob.material_slots[0].material = mat
        _set_material(st.slot_bsdfs[i], obj.material)
        ob.location = obj.position
        ob.rotation_euler = (0.0, 0.0, obj.yaw)
        ob.scale = (obj.scale, obj.scale, obj.scale)
        ob.hide_render = False
    return st


def render(spec: SceneSpec, threads: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Scene-linear RGB (H, W, 3) float32 and the object-index map (H, W) int64, row 0 at the top.

    ``threads`` = 0 lets Cycles use every core; a number fixes it (parallel runs share a machine).
    """
    bpy = _bpy()
    st = apply(spec)
    st.scene.render.threads_mode = "FIXED" if threads else "AUTO"
    if threads:
        st.scene.render.threads = threads
    target = Path(st.scene.render.filepath)
    target.unlink(missing_ok=True)
    with _silenced():
        bpy.ops.render.render(write_still=True)
    if not target.exists():
        raise RuntimeError(f"Cycles wrote no image to {target}")
    channels = read_exr(target)
    try:
        rgb = np.stack([channels[f"ViewLayer.Combined.{c}"] for c in "RGB"], axis=-1)
        index = channels["ViewLayer.Object Index.X"]
    except KeyError as err:
        raise RuntimeError(f"Cycles' file lacks the pass {err.args[0]!r}: {sorted(channels)}") from None
    if rgb.shape[:2] != (spec.height, spec.width):
        raise RuntimeError(f"Cycles rendered {rgb.shape[1]}x{rgb.shape[0]}, not {spec.width}x{spec.height}")
    return rgb, np.rint(index).astype(np.int64)


@contextlib.contextmanager
def _silenced() -> Iterator[None]:
    """Blender prints a line per saved file from C; AUTOSIM_CYCLES_VERBOSE=1 keeps it."""
    if os.environ.get("AUTOSIM_CYCLES_VERBOSE"):
        yield
        return
    sys.stdout.flush()
    kept, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        yield
    finally:
        os.dup2(kept, 1)
        os.close(kept)
        os.close(null)
