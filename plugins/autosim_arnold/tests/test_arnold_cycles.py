"""Cycles renders (tiny images) against the layout's own geometry."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from arnold_testing import needs_bpy, record

from autosim_arnold.geometry import project
from autosim_arnold.meshes import shipped_meshes
from autosim_arnold.params import ArnoldSettings
from autosim_arnold.plugin import render_records
from autosim_arnold.scene import layout

pytestmark = needs_bpy
MESHES = shipped_meshes()
LABELS = sorted(MESHES)


def test_boxes_match_the_index_pass_and_the_projected_geometry() -> None:
    from autosim_arnold import cycles

    size = 64
    checked = 0
    for cell, seed in (("office:8:low", 1), ("kitchen:5:low", 2), ("living:7:low", 4)):
        spec = layout(record(cell, seed=seed, n_objects=4), MESHES, size)
        _, index = cycles.render(spec)
        example = render_records([record(cell, seed=seed, n_objects=4)], ArnoldSettings(image_size=size))[0]
        # the class mask is the index pass mapped through each slot's class
        for i, obj in enumerate(spec.objects):
            assert (example.mask[torch.from_numpy(index == i + 1)] == LABELS.index(obj.category) + 1).all()
        assert ((example.mask == 0).numpy() == (index == 0)).all()
        for det in example.objects:
            obj = spec.objects[det["instance"] - 1]
            pixels = index == det["instance"]
            rows, cols = np.flatnonzero(pixels.any(1)), np.flatnonzero(pixels.any(0))
            assert det["box"] == [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]
            assert det["category"] == obj.category
            if det["visible_fraction"] > 0.97:
                # an unoccluded object's box is its projected vertices' bounding box, to a pixel
                xy, _ = project(obj.world_vertices(), spec.camera, size, size)
                lo = np.clip(xy.min(0), 0, size)
                hi = np.clip(xy.max(0), 0, size)
                assert np.allclose(det["box"], [lo[0], lo[1], hi[0], hi[1]], atol=1.0), (cell, det)
                checked += 1
    assert checked >= 5


def test_occlusion_lowers_the_visible_fraction() -> None:
    from autosim_arnold import cycles
    from autosim_arnold.plugin import detections
    from autosim_arnold.scene import PlacedObject

    spec = layout(record("kitchen:4:low", seed=0, n_objects=1), MESHES, 48)
    base = spec.objects[0]
    # a second, taller object straight between the camera and the first hides part of it
    cam = np.array(spec.camera.position)
    pos = np.array(base.position)
    towards = (cam - pos)[:2] / np.linalg.norm((cam - pos)[:2])
    blocker_xy = pos[:2] + towards * (base.radius + MESHES["bottle"].footprint_radius + 0.01)
    blocker = PlacedObject("bottle", MESHES["bottle"], (*blocker_xy, pos[2]), 0.0, 1.0, base.material)
    alone = detections(spec, cycles.render(spec)[1], 0.1)
    hidden = dataclasses.replace(spec, objects=[base, blocker])
    both = detections(hidden, cycles.render(hidden)[1], 0.1)
    assert alone[0]["visible_fraction"] > 0.95
    first = next(d for d in both if d["instance"] == 1)
    assert first["visible_fraction"] < alone[0]["visible_fraction"] - 0.1


def test_same_seed_same_image() -> None:
    settings = ArnoldSettings(image_size=32)
    a = render_records([record("living:3:low", seed=9)], settings)[0]
    render_records([record("office:1:low", seed=10)], settings)  # something else in between
    b = render_records([record("living:3:low", seed=9)], settings)[0]
    c = render_records([record("living:3:low", seed=11)], settings)[0]
    assert torch.equal(a.image, b.image) and torch.equal(a.mask, b.mask)
    assert not torch.equal(a.image, c.image)


def test_high_quality_uses_more_samples_and_is_less_noisy() -> None:
    from autosim_arnold import cycles

    size = 32
    low = layout(record("kitchen:8:low", seed=3), MESHES, size)
    high = layout(record("kitchen:8:high", seed=3), MESHES, size)
    used = {}
    for spec in (low, high):
        stage = cycles.apply(spec)
        used[spec.samples] = (stage.scene.cycles.samples, stage.scene.cycles.max_bounces,
                              stage.scene.cycles.use_denoising)
    assert used[low.samples] == (low.samples, low.bounces, False)
    assert used[high.samples] == (high.samples, high.bounces, True)
    assert high.samples >= 4 * low.samples

    reference = cycles.render(dataclasses.replace(high, samples=512, denoise=False, seed=99))[0]
    error = {}
    for name, spec in (("low", low), ("high", high)):
        rgb = cycles.render(spec)[0]
        error[name] = float(np.mean((np.clip(rgb, 0, 1) - np.clip(reference, 0, 1)) ** 2))
    assert error["high"] < 0.5 * error["low"], error


def test_a_worker_renders_after_this_process_loaded_blender() -> None:
    """Rendering here first puts Blender's script folders in front of sys.path, which a spawned
    worker inherits; the worker must still load the bpy module and render the same images."""
    import sys

    from autosim_core.config import Executor as ExecutorSettings
    from autosim_core.executors import SimulatorRef, make_executor

    settings = ArnoldSettings(image_size=32)
    records = [record("living:3:low", seed=9, scene_id=0), record("office:1:low", seed=10, scene_id=1)]
    here = render_records([dict(r) for r in records], settings)
    ref = SimulatorRef("arnold", "autosim_arnold.plugin:arnold_simulator", settings.model_dump(mode="json"),
                       tuple(sys.path))
    with make_executor(ExecutorSettings(kind="processes", workers=1, retries=0)) as executor:
        there = executor.render([dict(r) for r in records], ref, lambda recs: render_records(recs, settings))
    for a, b in zip(here, there, strict=True):
        assert torch.equal(a.image, b.image) and torch.equal(a.mask, b.mask)
