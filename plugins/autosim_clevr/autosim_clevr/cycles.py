"""The ``cycles`` backend: CLEVR scenes rendered by real Blender/Cycles through the ``bpy`` wheel.

Everything is built in code from a :class:`~autosim_clevr.scene.Scene3D` (nothing is loaded from
a .blend file), following the conventions in :mod:`autosim_clevr.scene`, so that the class masks
agree with the ``fast`` backend's.

How the passes come back: in ``bpy`` 5.0 the ``Render Result`` image has no pixel buffer that
Python can read (its ``pixels`` are empty after a render), and Viewer nodes are not evaluated in a
final (F12 / background) render, so a compositor tree (``scene.compositing_node_group``) with a
File Output node writes the combined pass and the object-index pass as 32-bit float OpenEXR files
to a private temporary folder; they are loaded back with ``bpy.data.images.load``. The combined
pass is scene-linear; the sRGB transfer function is applied here (the same curve as Blender's
"Standard" view transform), so images come back as float sRGB without 8-bit quantisation.

``bpy`` is imported lazily, inside the functions, so that importing ``autosim_clevr`` never needs
Blender. Blender keeps one global state per process: the scene is reset to factory settings once,
then reused for every scene of every batch (only the objects and lights are rebuilt).
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
import torch

from .fast import AMBIENT_GAIN, GROUND_SRGB, LIGHT_GAIN, LIGHT_RADIUS, SKY
from .scene import CLASS_ID, SIZES, Light, Scene3D, SceneObject

# Lighting follows the fast backend's convention, so that one parameter value gives the same
# exposure in both backends: a lamp of intensity 1 delivers irradiance LIGHT_GAIN[name] at the
# scene centre (facing it), in units where a Lambertian surface of albedo a shows radiance a * E.
# A Cycles point light of P watts gives radiance a * P / (4 pi^2 d^2) at distance d, hence
# P = 4 pi^2 d^2 * intensity * gain. The sky likewise has radiance ambient * AMBIENT_GAIN * SKY.
GROUND_HALF_SIZE = 500.0  # stands in for the infinite ground plane
RUBBER_ROUGHNESS = 0.9
METAL_ROUGHNESS = 0.25
# Tessellation of the curved primitives: the inscribed polygon loses ~0.2% of a sphere's projected
# area at 64 segments, well below the masks' one-pixel boundary error.
SEGMENTS = 64

_MAX_SEED = 2**31 - 1


class CyclesRenderError(RuntimeError):
    """A scene could not be rendered; the message names the scene id."""


def srgb_to_linear(c: float) -> float:
    """sRGB-encoded value in [0, 1] to linear (Principled BSDF base colours are linear)."""
    return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    """The sRGB transfer function, applied after clipping to [0, 1] as a display would."""
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1.0 / 2.4) - 0.055)


def light_watts(light: Light) -> float:
    """Blender power of a point light, matching the fast backend's irradiance at the scene centre."""
    d2 = sum(c * c for c in light.position)
    return 4.0 * math.pi**2 * d2 * max(0.0, float(light.intensity)) * LIGHT_GAIN.get(light.name, 1.0)


@dataclass
class _Blender:
    """Handles on the one Blender scene this process renders into."""

    scene: Any
    camera: Any
    world_background: Any
    outdir: Path
    meshes: dict[str, Any] = field(default_factory=dict)
    materials: dict[tuple[str, str], Any] = field(default_factory=dict)
    transient: list[Any] = field(default_factory=list)


_STATE: _Blender | None = None
_BPY_PID: int | None = None  # the process that loaded Blender


def render_batch(scenes: list[Scene3D]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Render each scene with Cycles on the CPU.

    Returns, per scene, ``(image, mask)``: the image float32 ``(3, H, W)`` in [0, 1] (sRGB) and the
    class mask int64 ``(H, W)`` (0 background, 1 sphere, 2 cube, 3 cylinder), row 0 at the top.
    """
    if not scenes:
        return []
    state = _ensure_blender()
    results: list[tuple[torch.Tensor, torch.Tensor]] = []
    for scene in scenes:
        try:
            results.append(_render_one(state, scene))
        except Exception as err:
            raise CyclesRenderError(f"Cycles could not render scene {scene.id!r}: {err}") from err
    return results


# --------------------------------------------------------------------------------------------
# One-time setup


def _ensure_blender() -> _Blender:
    global _STATE, _BPY_PID
    if _BPY_PID is not None and _BPY_PID != os.getpid():
        # Blender's thread pools do not survive fork(): a forked child hangs in its first render.
        raise RuntimeError(
            f"Blender was loaded in process {_BPY_PID} and this process is a fork of it; render Cycles "
            "scenes in worker processes started with the 'spawn' or 'forkserver' method"
        )
    if "bpy" not in sys.modules:
        # Loading bpy puts Blender's scripts/modules (which holds a pure-Python `bpy` package) at
        # the front of sys.path; a process spawned from one that loaded Blender inherits that path
        # and would import the wrong `bpy`. Blender adds the folders back once the real one loads.
        sys.path[:] = [p for p in sys.path if not _is_blender_scripts_dir(p)]
    try:
        import bpy  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f"the cycles backend needs Blender's Python module: pip install 'autosim-clevr[blender]' ({err})"
        ) from err
    _BPY_PID = os.getpid()
    if _STATE is not None:
        try:
            _STATE.scene.name  # noqa: B018 - probes whether the handle still points at live data
        except ReferenceError:
            # Someone else in this process reset Blender (e.g. loaded a file); build again.
            _STATE = None
    if _STATE is None:
        _STATE = _setup_blender()
    return _STATE


def _is_blender_scripts_dir(path: str) -> bool:
    parts = Path(path).parts
    return any(a == "bpy" and c == "scripts" for a, c in zip(parts, parts[2:], strict=False))


def _setup_blender() -> _Blender:
    import bpy

    # A clean slate: the user's startup file and preferences must not leak into the renders.
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.use_denoising = False
    scene.cycles.use_adaptive_sampling = False  # exact sample counts: noise must follow `samples`
    scene.cycles.use_animated_seed = False
    scene.render.resolution_percentage = 100
    scene.render.pixel_aspect_x = 1.0
    scene.render.pixel_aspect_y = 1.0
    scene.render.film_transparent = False
    scene.render.use_compositing = True
    scene.render.use_sequencer = False
    # With three lamps the light tree costs more than it saves (~15% at 96x96, 8 spp); without it
    # Cycles picks a lamp in proportion to its power, as the fast backend does.
    scene.cycles.use_light_tree = False
    scene.view_settings.view_transform = "Standard"

    view_layer = scene.view_layers[0]
    view_layer.use_pass_combined = True
    view_layer.use_pass_object_index = True

    cam_data = bpy.data.cameras.new("clevr_camera")
    cam_data.sensor_fit = "HORIZONTAL"
    cam_data.sensor_width = 36.0
    cam_data.clip_start = 0.01
    cam_data.clip_end = 4.0 * GROUND_HALF_SIZE
    camera = bpy.data.objects.new("clevr_camera", cam_data)
    scene.collection.objects.link(camera)
    scene.camera = camera

    world = bpy.data.worlds.new("clevr_world")
    scene.world = world
    background = next(n for n in world.node_tree.nodes if n.type == "BACKGROUND")
    background.inputs["Color"].default_value = (*SKY, 1.0)

    ground = bpy.data.objects.new("clevr_ground", _ground_mesh())
    ground.data.materials.append(_principled("clevr_ground", GROUND_SRGB, metallic=0.0, roughness=0.9))
    ground.pass_index = CLASS_ID["background"]
    scene.collection.objects.link(ground)

    outdir = Path(tempfile.mkdtemp(prefix="autosim_cycles_"))
    atexit.register(shutil.rmtree, outdir, True)
    _setup_compositor(scene, outdir)
    return _Blender(scene=scene, camera=camera, world_background=background, outdir=outdir)


def _setup_compositor(scene: Any, outdir: Path) -> None:
    import bpy

    tree = bpy.data.node_groups.new("clevr_passes", "CompositorNodeTree")
    scene.compositing_node_group = tree
    layers = tree.nodes.new("CompositorNodeRLayers")
    out = tree.nodes.new("CompositorNodeOutputFile")
    out.directory = str(outdir)
    out.file_name = "pass_"
    out.format.media_type = "IMAGE"
    out.format.file_format = "OPEN_EXR"
    out.format.color_depth = "32"
    out.format.exr_codec = "NONE"  # the files live a few milliseconds; compressing them is waste
    out.save_as_render = False  # scene-linear values, no view transform
    out.file_output_items.new("RGBA", "image")
    out.file_output_items.new("FLOAT", "index")
    tree.links.new(layers.outputs["Image"], out.inputs["image"])
    tree.links.new(layers.outputs["Object Index"], out.inputs["index"])


def _ground_mesh() -> Any:
    import bpy

    s = GROUND_HALF_SIZE
    mesh = bpy.data.meshes.new("clevr_ground")
    mesh.from_pydata([(-s, -s, 0.0), (s, -s, 0.0), (s, s, 0.0), (-s, s, 0.0)], [], [(0, 1, 2, 3)])
    mesh.update()
    return mesh


def _primitive_mesh(shape: str) -> Any:
    """A unit primitive centred at the origin; objects scale it by their radius r."""
    import bmesh
    import bpy

    bm = bmesh.new()
    if shape == "sphere":
        bmesh.ops.create_uvsphere(bm, u_segments=SEGMENTS, v_segments=SEGMENTS // 2, radius=1.0)
        for face in bm.faces:
            face.smooth = True
    elif shape == "cube":
        bmesh.ops.create_cube(bm, size=2.0)  # half-extent 1
    elif shape == "cylinder":
        bmesh.ops.create_cone(bm, cap_ends=True, cap_tris=False, segments=SEGMENTS, radius1=1.0, radius2=1.0, depth=2.0)
        # Smooth sides, flat caps, and a sharp rim so the caps' normals do not bleed into the sides.
        for face in bm.faces:
            face.smooth = abs(face.normal.z) < 0.5
        for edge in bm.edges:
            edge.smooth = all(f.smooth for f in edge.link_faces)
    else:
        bm.free()
        raise ValueError(f"unknown shape {shape!r}")
    mesh = bpy.data.meshes.new(f"clevr_{shape}")
    bm.to_mesh(mesh)
    bm.free()
    mesh.materials.append(None)  # one slot, filled per object (see _add_object)
    return mesh


def _principled(name: str, srgb: tuple[float, float, float], metallic: float, roughness: float) -> Any:
    import bpy

    mat = bpy.data.materials.new(name)  # Blender 5 materials always come with a Principled BSDF tree
    bsdf = next(n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    bsdf.inputs["Base Color"].default_value = (*(srgb_to_linear(c) for c in srgb), 1.0)
    bsdf.inputs["Metallic"].default_value = metallic
    bsdf.inputs["Roughness"].default_value = roughness
    return mat


def _material(state: _Blender, obj: SceneObject) -> Any:
    key = (obj.colour, obj.material)
    if key not in state.materials:
        if obj.material == "metal":
            mat = _principled(f"clevr_{obj.colour}_metal", obj.rgb, metallic=1.0, roughness=METAL_ROUGHNESS)
        elif obj.material == "rubber":
            mat = _principled(f"clevr_{obj.colour}_rubber", obj.rgb, metallic=0.0, roughness=RUBBER_ROUGHNESS)
        else:
            raise ValueError(f"unknown material {obj.material!r}")
        state.materials[key] = mat
    return state.materials[key]


# --------------------------------------------------------------------------------------------
# Per scene


def _render_one(state: _Blender, spec: Scene3D) -> tuple[torch.Tensor, torch.Tensor]:
    import bpy

    _clear_transient(state)
    scene = state.scene
    scene.render.resolution_x = int(spec.width)
    scene.render.resolution_y = int(spec.height)
    scene.cycles.samples = max(1, int(spec.samples))
    bounces = max(0, int(spec.bounces))
    scene.cycles.max_bounces = bounces
    scene.cycles.diffuse_bounces = bounces
    scene.cycles.glossy_bounces = bounces
    scene.cycles.transmission_bounces = bounces
    scene.cycles.seed = int(spec.seed) % _MAX_SEED
    state.world_background.inputs["Strength"].default_value = max(0.0, float(spec.ambient)) * AMBIENT_GAIN

    _place_camera(state.camera, spec)
    for light in spec.lights:
        data = bpy.data.lights.new(f"clevr_light_{light.name}", "POINT")
        data.energy = light_watts(light)
        data.shadow_soft_size = LIGHT_RADIUS
        ob = bpy.data.objects.new(data.name, data)
        ob.location = light.position
        scene.collection.objects.link(ob)
        state.transient.append(ob)
    for i, obj in enumerate(spec.objects):
        _add_object(state, obj, i)

    for old in state.outdir.iterdir():
        old.unlink()
    with _quiet_stdout():
        bpy.ops.render.render(write_still=False)
    linear = _read_exr(state.outdir, "image", spec, channels=3)
    index = _read_exr(state.outdir, "index", spec, channels=1)[..., 0]

    image = torch.from_numpy(np.ascontiguousarray(linear_to_srgb(linear).transpose(2, 0, 1), dtype=np.float32))
    # Indices are written as exact floats; rounding only guards against any float noise.
    mask = torch.from_numpy(np.rint(index).astype(np.int64))
    if int(mask.min()) < 0 or int(mask.max()) >= len(CLASS_ID):
        raise RuntimeError(f"object-index pass holds values outside the class ids: {mask.unique().tolist()}")
    return image, mask


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Silence Blender's per-render log lines ("Saved: ...") at the file-descriptor level.

    Blender logs from C, so ``sys.stdout`` redirection does not reach it; errors still surface as
    exceptions from the render operator. ``AUTOSIM_CYCLES_VERBOSE=1`` keeps the log.
    """
    if os.environ.get("AUTOSIM_CYCLES_VERBOSE"):
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _clear_transient(state: _Blender) -> None:
    import bpy

    for ob in state.transient:
        data = ob.data
        bpy.data.objects.remove(ob, do_unlink=True)
        if isinstance(data, bpy.types.Light):
            bpy.data.lights.remove(data)
    state.transient.clear()


def _place_camera(camera: Any, spec: Scene3D) -> None:
    from mathutils import Vector

    position = Vector(spec.camera.position)
    direction = Vector(spec.camera.look_at) - position
    if direction.length == 0.0:
        raise ValueError("camera position equals look_at")
    camera.location = position
    # Blender cameras look down their local -Z with local +Y up; world z is the up vector.
    camera.rotation_mode = "QUATERNION"
    camera.rotation_quaternion = direction.to_track_quat("-Z", "Y")
    fov = math.radians(float(spec.camera.fov))
    if not 0.0 < fov < math.pi:
        raise ValueError(f"camera fov {spec.camera.fov} is not in (0, 180) degrees")
    camera.data.lens = camera.data.sensor_width / (2.0 * math.tan(fov / 2.0))


def _add_object(state: _Blender, obj: SceneObject, i: int) -> None:
    import bpy

    if obj.shape not in CLASS_ID or obj.shape == "background":
        raise ValueError(f"unknown shape {obj.shape!r}")
    if obj.size not in SIZES:
        raise ValueError(f"unknown size {obj.size!r}")
    if obj.shape not in state.meshes:
        state.meshes[obj.shape] = _primitive_mesh(obj.shape)
    # Objects share the cached unit mesh; each links its own material to the object, not the mesh.
    ob = bpy.data.objects.new(f"clevr_obj_{i}", state.meshes[obj.shape])
    ob.material_slots[0].link = "OBJECT"
    ob.material_slots[0].material = _material(state, obj)
    r = obj.radius
    ob.location = (obj.x, obj.y, r)  # every shape is centred at height r (see scene.py)
    ob.scale = (r, r, r)
    ob.rotation_euler = (0.0, 0.0, math.radians(obj.rotation))
    ob.pass_index = CLASS_ID[obj.shape]
    state.scene.collection.objects.link(ob)
    state.transient.append(ob)


def _read_exr(outdir: Path, item: str, spec: Scene3D, channels: int) -> np.ndarray:
    """Load one pass written by the File Output node as (H, W, channels), row 0 at the top."""
    import bpy

    found = sorted(outdir.glob(f"*{item}*.exr"))
    if not found:
        raise RuntimeError(f"Cycles wrote no {item!r} pass (files: {sorted(p.name for p in outdir.iterdir())})")
    img = bpy.data.images.load(str(found[0]), check_existing=False)
    try:
        img.colorspace_settings.is_data = True  # the file is already linear / raw; no conversion
        w, h = img.size
        if (w, h) != (spec.width, spec.height):
            raise RuntimeError(f"{item} pass is {w}x{h}, expected {spec.width}x{spec.height}")
        buf = np.empty(w * h * img.channels, dtype=np.float32)
        img.pixels.foreach_get(buf)
        pixels = buf.reshape(h, w, img.channels)
    finally:
        bpy.data.images.remove(img)
    # Blender stores images bottom row first.
    return pixels[::-1, :, :channels]
