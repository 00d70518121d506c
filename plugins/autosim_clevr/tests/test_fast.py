"""The fast backend against answers worked out independently of it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from clevr_scenes import make_scene

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


def _reference_spans(o: np.ndarray, d: np.ndarray, obj: SceneObject) -> tuple[np.ndarray, np.ndarray]:
    """(t_enter, t_exit) of rays against one object in float64, nan where they miss."""
    r = obj.radius
    p = o - np.array([obj.x, obj.y, r])
    if obj.shape == "sphere":
        b = (p * d).sum(1)
        disc = b * b - (p * p).sum(1) + r * r
        sq = np.sqrt(np.where(disc >= 0, disc, np.nan))
        return -b - sq, -b + sq
    if obj.shape == "cube":
        a = math.radians(obj.rotation)
        rot = np.array([[math.cos(a), math.sin(a), 0], [-math.sin(a), math.cos(a), 0], [0, 0, 1]])
        lp, ld = p @ rot.T, d @ rot.T
        with np.errstate(divide="ignore", invalid="ignore"):
            t1, t2 = (-r - lp) / ld, (r - lp) / ld
        near, far = np.minimum(t1, t2).max(1), np.maximum(t1, t2).min(1)
    else:
        a = (d[:, :2] ** 2).sum(1)
        b = (p[:, :2] * d[:, :2]).sum(1)
        disc = b * b - a * ((p[:, :2] ** 2).sum(1) - r * r)
        sq = np.sqrt(np.where(disc >= 0, disc, np.nan))
        z1, z2 = (-r - p[:, 2]) / d[:, 2], (r - p[:, 2]) / d[:, 2]
        near = np.maximum((-b - sq) / a, np.minimum(z1, z2))
        far = np.minimum((-b + sq) / a, np.maximum(z1, z2))
    ok = near <= far
    return np.where(ok, near, np.nan), np.where(ok, far, np.nan)


def test_ray_queries_match_a_brute_force_reference() -> None:
    """Every ray against every object with no culling, in float64: the nearest hit of
    primary rays, and the shadow test with the culling of inactive rays and own objects."""
    from autosim_clevr.fast import closest, occluded, pack_objects

    objs = [SceneObject("sphere", "red", "rubber", "large", -1.5, 0.5),
            SceneObject("cube", "blue", "metal", "large", 0.5, -0.5, 35.0),
            SceneObject("cylinder", "gray", "rubber", "small", 1.0, 1.5),
            SceneObject("cube", "green", "rubber", "small", -0.5, -2.0, 70.0),
            SceneObject("sphere", "cyan", "metal", "small", 2.0, -1.5)]
    scene = make_scene(objs)
    g = pack_objects([scene], torch.device("cpu"))
    order = [next(i for i, o in enumerate(objs) if (o.x, o.y) == (float(x), float(y)))
             for x, y in zip(g.x[0].tolist(), g.y[0].tolist(), strict=True)]
    rng = np.random.default_rng(0)
    n = 4000
    eye = np.array([7.36, -6.93, 4.96])
    aim = np.c_[rng.uniform(-3, 3, n), rng.uniform(-3, 3, n), rng.uniform(0, 1.5, n)]
    d = (aim - eye) / np.linalg.norm(aim - eye, axis=1, keepdims=True)
    spans = [_reference_spans(np.broadcast_to(eye, d.shape), d, objs[i]) for i in order]
    t_ref = np.stack([np.where(near > 1e-4, near, far) for near, far in spans], 1)
    t_ref = np.where(t_ref > 1e-4, t_ref, np.inf)
    t_ref = np.where(np.isnan(t_ref), np.inf, t_ref)
    hit_ref = np.isfinite(t_ref).any(1)

    def v3(a: np.ndarray) -> tuple[torch.Tensor, ...]:
        return tuple(torch.tensor(a[None, :, i], dtype=torch.float32) for i in range(3))

    t, idx, what = closest(tuple(torch.tensor([[c]], dtype=torch.float32) for c in eye), v3(d), g)  # type: ignore[arg-type]
    got_obj = (what[0] == 2).numpy()
    # rays that graze a silhouette within float error may go either way
    with np.errstate(invalid="ignore"):
        sure = np.abs(np.sort(t_ref, 1)[:, 0] - np.sort(t_ref, 1)[:, 1]) > 1e-3
    assert (got_obj == hit_ref).mean() > 0.999
    both = got_obj & hit_ref & sure
    assert np.array_equal(idx[0].numpy()[both], t_ref.argmin(1)[both])
    np.testing.assert_allclose(t[0].numpy()[both], t_ref.min(1)[both], rtol=1e-4, atol=1e-4)

    # shadow rays from the hit points towards a light, outward from their own object
    p = eye + d * np.where(np.isfinite(t_ref.min(1)), t_ref.min(1), 0.0)[:, None]
    light = np.array([-4.67, -4.01, 1.5])
    own = np.where(hit_ref, t_ref.argmin(1), -1)
    start = p + 2e-3 * (light - p) / np.linalg.norm(light - p, axis=1, keepdims=True)
    ld = light - start
    dist = np.linalg.norm(ld, axis=1)
    ld /= dist[:, None]
    active = rng.random(n) < 0.8
    blocked_ref = np.zeros(n, dtype=bool)
    for k, (near, far) in enumerate(_reference_spans(start, ld, objs[i]) for i in order):
        with np.errstate(invalid="ignore"):
            blocked_ref |= (far > 1e-4) & (near < dist) & (own != k)
    blocked_ref &= active
    got = occluded(v3(start), v3(ld), g, torch.tensor(dist[None], dtype=torch.float32),  # type: ignore[arg-type]
                   active=torch.tensor(active[None]), own=torch.tensor(own[None]))[0].numpy()
    assert (got == blocked_ref).mean() > 0.999
    assert blocked_ref.sum() > 50  # the test exercises shadows at all
