"""The fast backend against answers worked out independently of it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import make_scene

from autosim_clevr.fast import render_batch
from autosim_clevr.scene import CLASS_ID, Camera, SceneObject


def _pixel_scale(fov_deg: float, width: int) -> float:
    """Pixels per unit of tan(angle) off the optical axis."""
    return width / 2 / math.tan(math.radians(fov_deg) / 2)


def test_sphere_on_axis_matches_analytic_projection() -> None:
    r, cam = 0.7, Camera(position=(0.0, -9.0, 4.0), look_at=(0.0, 0.0, 0.7), fov=30.0)
    w, h = 160, 120
    scene = make_scene([SceneObject("sphere", "red", "rubber", "large", 0.0, 0.0)], width=w, height=h,
                       samples=1, camera=cam)
    _, mask = render_batch([scene])[0]
    d = math.dist(cam.position, (0.0, 0.0, r))
    radius_px = math.tan(math.asin(r / d)) * _pixel_scale(cam.fov, w)
    area = float((mask == CLASS_ID["sphere"]).sum())
    assert area == pytest.approx(math.pi * radius_px**2, rel=0.03)
    rows, cols = torch.nonzero(mask == CLASS_ID["sphere"], as_tuple=True)
    assert float(cols.float().mean()) + 0.5 == pytest.approx(w / 2, abs=0.5)
    assert float(rows.float().mean()) + 0.5 == pytest.approx(h / 2, abs=0.5)


def test_small_sphere_off_axis_lies_where_its_centre_projects() -> None:
    cam = Camera(position=(0.0, -12.0, 5.0), look_at=(0.0, 0.0, 0.0), fov=40.0)
    w, h = 160, 120
    x, y, r = 2.0, 1.0, 0.35
    scene = make_scene([SceneObject("sphere", "blue", "rubber", "small", x, y)], width=w, height=h,
                       samples=1, camera=cam)
    _, mask = render_batch([scene])[0]
    # the projection, written out with numpy
    eye, target = np.array(cam.position), np.array(cam.look_at)
    f = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(f, [0, 0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, f)
    v = np.array([x, y, r]) - eye
    s = _pixel_scale(cam.fov, w)
    col = w / 2 + v @ right / (v @ f) * s
    row = h / 2 - v @ up / (v @ f) * s
    rows, cols = torch.nonzero(mask == CLASS_ID["sphere"], as_tuple=True)
    assert float(cols.float().mean()) + 0.5 == pytest.approx(col, abs=1.0)
    assert float(rows.float().mean()) + 0.5 == pytest.approx(row, abs=1.0)
    radius_px = math.tan(math.asin(r / np.linalg.norm(v))) * s
    assert float((mask == 1).sum()) == pytest.approx(math.pi * radius_px**2, rel=0.1)


def test_cube_face_on_has_the_area_of_its_front_face() -> None:
    # eye level with the cube's centre, looking along +y at its front face
    hside, dist = 0.7, 8.0
    cam = Camera(position=(0.0, -dist, hside), look_at=(0.0, 0.0, hside), fov=30.0)
    w, h = 160, 120
    scene = make_scene([SceneObject("cube", "green", "rubber", "large", 0.0, 0.0, rotation=0.0)],
                       width=w, height=h, samples=1, camera=cam)
    _, mask = render_batch([scene])[0]
    side_px = 2 * hside / (dist - hside) * _pixel_scale(cam.fov, w)
    assert float((mask == CLASS_ID["cube"]).sum()) == pytest.approx(side_px**2, rel=0.05)
    assert int((mask == CLASS_ID["sphere"]).sum()) == 0 and int((mask == CLASS_ID["cylinder"]).sum()) == 0


def test_each_shape_gets_its_class() -> None:
    objs = [SceneObject("sphere", "red", "rubber", "large", -2.0, 1.0),
            SceneObject("cube", "blue", "metal", "large", 0.0, 0.0, 30.0),
            SceneObject("cylinder", "yellow", "rubber", "large", 2.0, -1.0)]
    _, mask = render_batch([make_scene(objs, width=96, height=64, samples=1)])[0]
    counts = torch.bincount(mask.flatten(), minlength=4)
    assert all(int(c) > 30 for c in counts)


def _mean(scene_kwargs: dict, objs: list[SceneObject]) -> float:
    img, _ = render_batch([make_scene(objs, samples=8, **scene_kwargs)])[0]
    return float(img.mean())


@pytest.mark.parametrize("light", ["key", "fill", "back", "ambient"])
def test_brighter_light_brighter_image(light: str) -> None:
    objs = [SceneObject("cube", "gray", "rubber", "large", 0.0, 0.0)]
    dim = _mean({light: 0.3}, objs)
    bright = _mean({light: 1.5}, objs)
    assert bright > dim + 0.02


def test_metal_shows_a_highlight_rubber_does_not() -> None:
    out = {}
    for material in ("metal", "rubber"):
        scene = make_scene([SceneObject("sphere", "gray", material, "large", 0.0, 0.0)], width=96, height=64,
                           samples=16)
        img, mask = render_batch([scene])[0]
        out[material] = float(img.max(dim=0).values[mask == 1].max())
    assert out["metal"] > 0.9
    assert out["rubber"] < 0.7


def test_fewer_samples_more_noise() -> None:
    objs = [SceneObject("cylinder", "red", "rubber", "large", 0.5, 0.0),
            SceneObject("sphere", "cyan", "metal", "small", -1.0, 0.5)]
    ref = render_batch([make_scene(objs, samples=128, seed=1)])[0][0]
    err = {}
    for spp in (1, 16):
        img = render_batch([make_scene(objs, samples=spp, seed=2)])[0][0]
        err[spp] = float((img - ref).pow(2).mean().sqrt())
    assert err[1] > 2 * err[16]
    assert err[1] > 0.05


def test_same_seed_same_image_other_seed_other_noise() -> None:
    objs = [SceneObject("sphere", "red", "metal", "large", 0.0, 0.0)]
    a1, m1 = render_batch([make_scene(objs, seed=5, samples=2)])[0]
    a2, m2 = render_batch([make_scene(objs, seed=5, samples=2)])[0]
    b, mb = render_batch([make_scene(objs, seed=6, samples=2)])[0]
    assert torch.equal(a1, a2) and torch.equal(m1, m2)
    assert not torch.equal(a1, b)
    assert torch.equal(m1, mb)  # the mask is noise-free


def test_image_does_not_depend_on_its_batch() -> None:
    a = make_scene([SceneObject("sphere", "red", "metal", "large", 0.0, 0.0)], seed=3, samples=3, scene_id="a")
    b = make_scene([SceneObject("cube", "blue", "rubber", "small", 1.0, 1.0),
                    SceneObject("cylinder", "gray", "metal", "large", -1.0, 1.0)], seed=4, samples=5, scene_id="b")
    alone = render_batch([a])[0]
    together = render_batch([b, a])[1]
    assert torch.allclose(alone[0], together[0], atol=1e-5)
    assert torch.equal(alone[1], together[1])


def test_output_types_and_ranges() -> None:
    scenes = [make_scene([], width=40, height=30), make_scene([], width=20, height=10)]
    out = render_batch(scenes)
    assert [tuple(i.shape) for i, _ in out] == [(3, 30, 40), (3, 10, 20)]
    assert [tuple(m.shape) for _, m in out] == [(30, 40), (10, 20)]
    for img, mask in out:
        assert img.dtype == torch.float32 and mask.dtype == torch.int64
        assert float(img.min()) >= 0 and float(img.max()) <= 1
        assert int(mask.max()) == 0


def test_rejects_a_bad_scene() -> None:
    with pytest.raises(ValueError, match="samples"):
        render_batch([make_scene([], samples=0)])
