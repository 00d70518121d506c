"""The ``fast`` backend: an analytic ray caster for CLEVR scenes in plain torch.

It is not a path tracer, but it is built so that every knob of the parameter space changes
the pixels the way it changes a path-traced image, which is what the segmentation model
(and so the optimiser) sees:

- samples per pixel: each sample jitters its ray inside the pixel, picks *one* light at
  random (in proportion to its strength), a random point on that light's disc, one
  cosine-distributed ambient-occlusion ray and, for metal, a slightly perturbed mirror
  ray. Few samples therefore give the grainy look of a low-sample render (noisy shadows,
  speckled ambient light, aliased edges); many samples converge to a clean image.
- bounces: 0 means direct light only (metal shows its highlights and the environment
  but no other objects); >= 1 traces one mirror bounce off metal, and diffuse
  inter-reflection is approximated by a uniform fill that grows as 1 - 2^-bounces.
- light intensities scale the three point lights (with soft shadows) and the ambient sky.

The class mask is primary visibility of the pixel-centre ray, so it is exact and the same
for any number of samples. Vectors are kept as triples of tensors (x, y, z) rather than
tensors with a trailing 3, so that every operation is a plain elementwise kernel.

Scenes of the same image size are rendered together: objects are padded per shape to the
largest count of the batch (padding never hits), each scene draws its random numbers from
its own generator seeded with ``scene.seed``, so an image does not depend on which other
scenes share its batch (up to the last bit of transcendental functions).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch

from .geometry import camera_basis, tan_half_fov
from .scene import CLASS_ID, COLOURS, MATERIALS, SHAPES, SIZES, Scene3D, SceneObject

Tensor = torch.Tensor
V3 = tuple[Tensor, Tensor, Tensor]

INF = math.inf
T_EPS = 1e-4
"""Hits closer than this are ignored (the surface a secondary ray starts from)."""
OFFSET = 2e-3
"""Secondary rays start this far off the surface along its normal."""

# Strength of each lamp at intensity 1: irradiance at the scene centre facing the lamp.
LIGHT_GAIN: dict[str, float] = {"key": 1.0, "fill": 0.4, "back": 0.6}
LIGHT_RADIUS = 0.5
AMBIENT_GAIN = 0.35
BOUNCE_GAIN = 0.08
SKY = (0.85, 0.9, 1.0)
GROUND_SRGB = (0.47, 0.47, 0.47)
METAL_DIFFUSE = 0.15
METAL_REFLECT = 0.8
SPECULAR = 6.0
SHININESS = 60.0
GLOSS = 0.04
SPEC_WHITE = 0.5
"""How far a metal's highlight is whitened from its own colour (bright light sources clip)."""
PIXEL_ELEMENTS = 1 << 20
"""Rays x objects per intermediate tensor; chunks of that size stay in cache."""
N_RANDOM = 9
BOUND2 = {"sphere": 1.0, "cube": 3.0, "cylinder": 2.0}
"""Squared radius of each shape's bounding sphere about its centre, in units of r^2."""
STRATIFIED = [2, 5]
"""Random numbers stratified over samples: the light choice and the occlusion ray's elevation."""


DIFFERENTIABLE = ("ambient", "key_light", "fill_light", "back_light")
"""The parameters a render is differentiable in, the columns of ``render_batch``'s ``intensities``:
the image is linear in each (before the sRGB curve), at fixed random numbers and light picks."""


def srgb_to_linear(c: float) -> float:
    return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4


def linear_to_srgb(x: Tensor) -> Tensor:
    x = x.clamp(0.0, 1.0)
    return torch.where(x <= 0.0031308, 12.92 * x, 1.055 * x.clamp_min(1e-12).pow(1 / 2.4) - 0.055)


GROUND = tuple(srgb_to_linear(c) for c in GROUND_SRGB)


# ------------------------------------------------------------------------ vector helpers ---
def dot(a: V3, b: V3) -> Tensor:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def unit(a: V3) -> V3:
    inv = torch.rsqrt(dot(a, a).clamp_min(1e-20))
    return (a[0] * inv, a[1] * inv, a[2] * inv)


def along(o: V3, d: V3, t: Tensor) -> V3:
    return (o[0] + d[0] * t, o[1] + d[1] * t, o[2] + d[2] * t)


def last(v: V3) -> V3:
    """Add a trailing axis so that rays broadcast against the objects axis."""
    return (v[0].unsqueeze(-1), v[1].unsqueeze(-1), v[2].unsqueeze(-1))


# ------------------------------------------------------------------------------ objects ---
@dataclass
class Objects:
    """The batch's objects as (B, N) tables. Columns are grouped by shape (spheres, cubes,
    cylinders), each group padded to the largest count of that shape in the batch, so that
    the exact test of a shape runs on one contiguous block of columns."""

    kind: Tensor
    x: Tensor
    y: Tensor
    r: Tensor
    bound2: Tensor
    cos: Tensor
    sin: Tensor
    red: Tensor
    green: Tensor
    blue: Tensor
    metal: Tensor
    ok: Tensor
    blocks: tuple[tuple[int, int, int], ...] = ()
    """(class id, first column, end column) of each shape's group."""

    def map(self, fn: Callable[[Tensor], Tensor]) -> Objects:
        return Objects(**{f.name: fn(getattr(self, f.name)) for f in fields(self) if f.name != "blocks"},
                       blocks=self.blocks)

    @property
    def count(self) -> int:
        return int(self.kind.shape[-1])


def pack_objects(scenes: list[Scene3D], device: torch.device) -> Objects:
    groups = [[[o for o in sc.objects if o.shape == shape] for sc in scenes] for shape in SHAPES]
    widths = [max((len(g) for g in group), default=0) for group in groups]
    slots: list[list[SceneObject | None]] = [
        [o for group, w in zip(groups, widths, strict=True) for o in group[i] + [None] * (w - len(group[i]))]
        for i in range(len(scenes))
    ]
    kinds = [CLASS_ID[shape] for shape, w in zip(SHAPES, widths, strict=True) for _ in range(w)]
    most = len(kinds)
    blocks, start = [], 0
    for shape, w in zip(SHAPES, widths, strict=True):
        if w:
            blocks.append((CLASS_ID[shape], start, start + w))
        start += w

    def table(values: Callable[[SceneObject], float], pad: float) -> Tensor:
        rows = [[pad if o is None else values(o) for o in row] for row in slots]
        return torch.tensor(rows, dtype=torch.float32, device=device).reshape(len(scenes), most)

    def rad(o: SceneObject) -> float:
        return math.radians(o.rotation)

    return Objects(
        kind=torch.tensor(kinds, dtype=torch.long, device=device).expand(len(scenes), most).contiguous(),
        x=table(lambda o: o.x, 0.0), y=table(lambda o: o.y, 0.0), r=table(lambda o: o.radius, 1.0),
        bound2=table(lambda o: BOUND2[o.shape] * o.radius**2, 1.0),
        cos=table(lambda o: math.cos(rad(o)), 1.0), sin=table(lambda o: math.sin(rad(o)), 0.0),
        red=table(lambda o: srgb_to_linear(o.rgb[0]), 0.0), green=table(lambda o: srgb_to_linear(o.rgb[1]), 0.0),
        blue=table(lambda o: srgb_to_linear(o.rgb[2]), 0.0), metal=table(lambda o: float(o.material == "metal"), 0.0),
        ok=table(lambda o: 1.0, 0.0) > 0, blocks=tuple(blocks),
    )


# ------------------------------------------------------------------------- intersection ---
def span_sphere(o: V3, d: V3, x: Tensor, y: Tensor, r: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(t_enter, t_exit, hit) of unit rays and spheres resting on the ground (broadcasting)."""
    px, py, pz = o[0] - x, o[1] - y, o[2] - r
    b = px * d[0] + py * d[1] + pz * d[2]
    disc = b * b - (px * px + py * py + pz * pz - r * r)
    sq = disc.clamp_min(0.0).sqrt()
    return -b - sq, sq - b, disc >= 0


def span_cube(o: V3, d: V3, x: Tensor, y: Tensor, h: Tensor, c: Tensor, s: Tensor
              ) -> tuple[Tensor, Tensor, Tensor]:
    """Slab test in the cube's frame (rotated by (c, s) = (cos, sin) about z)."""
    px, py = o[0] - x, o[1] - y
    lx, ly = c * px + s * py, c * py - s * px
    ix, iy = 1.0 / (c * d[0] + s * d[1]), 1.0 / (c * d[1] - s * d[0])
    iz = 1.0 / d[2]
    a1, a2 = (-h - lx) * ix, (h - lx) * ix
    b1, b2 = (-h - ly) * iy, (h - ly) * iy
    c1, c2 = -o[2] * iz, (2 * h - o[2]) * iz
    near = torch.maximum(torch.maximum(torch.minimum(a1, a2), torch.minimum(b1, b2)), torch.minimum(c1, c2))
    far = torch.minimum(torch.minimum(torch.maximum(a1, a2), torch.maximum(b1, b2)), torch.maximum(c1, c2))
    return near, far, near <= far


def span_cylinder(o: V3, d: V3, x: Tensor, y: Tensor, r: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Infinite vertical cylinder intersected with the slab 0 <= z <= 2r (caps included)."""
    px, py = o[0] - x, o[1] - y
    a = (d[0] * d[0] + d[1] * d[1]).clamp_min(1e-12)
    b = px * d[0] + py * d[1]
    disc = b * b - a * (px * px + py * py - r * r)
    sq = disc.clamp_min(0.0).sqrt()
    inva = 1.0 / a
    iz = 1.0 / d[2]
    z1, z2 = -o[2] * iz, (2 * r - o[2]) * iz
    near = torch.maximum((-b - sq) * inva, torch.minimum(z1, z2))
    far = torch.minimum((sq - b) * inva, torch.maximum(z1, z2))
    return near, far, (disc >= 0) & (near <= far)


FAR = 1e30
PREFILTER_TOL = 1e-2
"""Slack of the matmul form of the bounding test, far above its float error (~1e-4 for
coordinates of size ~10), so that it never drops a pair the exact shape test would keep."""


@dataclass
class Pairs:
    """Ray-object pairs of one shape whose ray meets the object's bounding sphere."""

    ray: Tensor
    """Flat ray index, scene * P + ray."""
    column: Tensor
    """Object column in the (B, N) tables."""
    near: Tensor
    far: Tensor
    hit: Tensor


def _flat(v: Tensor, rows: Tensor, ray: Tensor) -> Tensor:
    """Per-ray values of a (B, P) or (B, 1) tensor at pairs (1-D gathers are far cheaper than
    2-D advanced indexing)."""
    return v.reshape(-1).index_select(0, rows if v.shape[1] == 1 else ray)


def ray_pairs(o: V3, d: V3, g: Objects, active: Tensor | None = None, own: Tensor | None = None) -> list[Pairs]:
    """Exact spans of the pairs of unit rays (B, P) and objects that survive the bounding test,
    one entry per shape.

    The bounding test written out per pair costs ~20 elementwise passes over a (rays x
    objects) tensor; instead b = o.d - C.d and -c = 2 o.C - |o|^2 - |C|^2 + R^2 come from two
    small matmuls, leaving two passes over the dense tensor. Rays outside ``active`` are
    skipped, and so is each ray's ``own`` object (the convex object it leaves, which a ray
    into the outer half-space of its surface cannot meet again).
    """
    n_scenes, n_rays = d[0].shape
    n_obj = g.count
    if n_obj == 0:
        return []
    ob = tuple(v.expand(n_scenes, -1) for v in o)
    shape = (n_scenes, n_rays)
    od = dot(ob, d)  # type: ignore[arg-type]
    # inactive rays and padding objects get -c = -FAR, which no b^2 outweighs
    gate = torch.zeros(shape, device=d[0].device) if active is None else torch.where(active, 0.0, -FAR)
    # objects x rays products, with the rays as the long contiguous axis: several times
    # faster than rays x objects for a matmul whose inner dimension is 4 to 6
    rays_b = torch.stack((d[0], d[1], d[2], od.expand(shape)), 1)
    rays_c = torch.stack((*(v.expand(shape) for v in ob), dot(ob, ob).expand(shape),  # type: ignore[arg-type]
                          torch.ones(shape, device=d[0].device), gate), 1)
    zero = torch.zeros_like(g.x)
    cen2 = g.x * g.x + g.y * g.y + g.r * g.r
    obj_b = torch.stack((-g.x, -g.y, -g.r, zero + 1.0), 2)
    obj_c = torch.stack((2.0 * g.x, 2.0 * g.y, 2.0 * g.r, zero - 1.0,
                         torch.where(g.ok, g.bound2 - cen2, -FAR), zero + 1.0), 2)
    b = torch.bmm(obj_b, rays_b)
    neg_c = torch.bmm(obj_c, rays_c)
    # the line passes within the bounding sphere (whether the sphere lies behind the origin
    # is left to the exact test, which is cheaper on the few survivors)
    bi, oi, pi = (b.mul_(b).add_(neg_c) > -PREFILTER_TOL).nonzero(as_tuple=True)
    ray = bi * n_rays + pi
    if own is not None:
        keep = (own.reshape(-1).index_select(0, ray) != oi).nonzero().squeeze(1)
        bi, pi, oi, ray = bi[keep], pi[keep], oi[keep], ray[keep]
    out = []
    for kind, first, end in g.blocks:
        if len(g.blocks) > 1:
            sel = ((oi >= first) & (oi < end)).nonzero().squeeze(1)
            bk, rk, ck = bi.index_select(0, sel), ray.index_select(0, sel), oi.index_select(0, sel)
        else:
            bk, rk, ck = bi, ray, oi
        if rk.numel() == 0:
            continue
        obj = bk * n_obj + ck
        ro = tuple(_flat(v, bk, rk) for v in ob)
        rd = tuple(_flat(v, bk, rk) for v in d)
        x, y, r = (t.reshape(-1).index_select(0, obj) for t in (g.x, g.y, g.r))
        if kind == CLASS_ID["sphere"]:
            near, far, hit = span_sphere(ro, rd, x, y, r)  # type: ignore[arg-type]
        elif kind == CLASS_ID["cube"]:
            c, s = (t.reshape(-1).index_select(0, obj) for t in (g.cos, g.sin))
            near, far, hit = span_cube(ro, rd, x, y, r, c, s)  # type: ignore[arg-type]
        else:
            near, far, hit = span_cylinder(ro, rd, x, y, r)  # type: ignore[arg-type]
        out.append(Pairs(rk, ck, near, far, hit))
    return out


def closest(o: V3, d: V3, g: Objects, active: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Nearest hit along unit rays (B, P): (t, object column, what) with what 0 sky, 1 ground,
    2 object. Rays outside ``active`` see no objects."""
    shape = d[0].shape
    dz = d[2]
    t_ground = torch.where(dz < 0, -o[2] / dz.clamp_max(-1e-12), INF)
    t_obj = torch.full((shape.numel(),), INF, device=dz.device)
    idx = torch.zeros(shape.numel(), dtype=torch.long, device=dz.device)
    found = ray_pairs(o, d, g, active)
    if found:
        ray = torch.cat([p.ray for p in found])
        column = torch.cat([p.column for p in found])
        t = torch.cat([torch.where(p.near > T_EPS, p.near, p.far) for p in found])
        hit = torch.cat([p.hit for p in found])
        t = torch.where(hit & (t > T_EPS), t, INF)
        t_obj = t_obj.scatter_reduce(0, ray, t, reduce="amin")
        win = (t < INF) & (t == t_obj.index_select(0, ray))
        idx = idx.index_put((ray[win],), column[win])
    t_obj, idx = t_obj.view(shape), idx.view(shape)
    is_obj = t_obj < t_ground
    t = torch.where(is_obj, t_obj, t_ground)
    what = torch.where(is_obj, 2, torch.where(t_ground < INF, 1, 0))
    return t, idx, what


def occluded(o: V3, d: V3, g: Objects, t_max: Tensor | float, active: Tensor | None = None,
             own: Tensor | None = None) -> Tensor:
    """Whether any object blocks each ray (B, P) before ``t_max`` (shadow and occlusion rays);
    see ``ray_pairs`` for ``active`` and ``own``."""
    blocked = torch.zeros(d[0].shape.numel(), dtype=torch.bool, device=d[0].device)
    for p in ray_pairs(o, d, g, active, own):
        hit = p.hit & (p.far > T_EPS)
        hit &= p.near < (t_max.reshape(-1).index_select(0, p.ray) if isinstance(t_max, Tensor) else t_max)
        blocked[p.ray[hit]] = True
    return blocked.view(d[0].shape)


@dataclass
class Surface:
    point: V3
    normal: V3
    albedo: V3
    metal: Tensor
    kind: Tensor


def surface(o: V3, d: V3, t: Tensor, idx: Tensor, what: Tensor, g: Objects,
            pick: Callable[[Tensor, Tensor], Tensor]) -> Surface:
    """Point, normal and material where each ray stopped; ``pick(table, idx)`` reads a
    per-object table at each ray's object index."""
    t = torch.where(what > 0, t, 0.0)
    p = along(o, d, t)
    obj = what == 2
    kind = torch.where(obj, pick(g.kind, idx), 0)
    r = pick(g.r, idx)
    c, s = pick(g.cos, idx), pick(g.sin, idx)
    qx, qy, qz = p[0] - pick(g.x, idx), p[1] - pick(g.y, idx), p[2] - r
    lx, ly = c * qx + s * qy, c * qy - s * qx
    # sphere
    inv_r = 1.0 / r
    sph = (qx * inv_r, qy * inv_r, qz * inv_r)
    # cube: the face whose local coordinate is largest
    ax, ay, az = lx.abs(), ly.abs(), qz.abs()
    fx = (ax >= ay) & (ax >= az)
    fy = ~fx & (ay >= az)
    fz = ~fx & ~fy
    nlx = torch.where(fx, torch.sign(lx), 0.0)
    nly = torch.where(fy, torch.sign(ly), 0.0)
    cub = (c * nlx - s * nly, s * nlx + c * nly, torch.where(fz, torch.sign(qz), 0.0))
    # cylinder: cap when nearer the cap plane than the side
    rho = (qx * qx + qy * qy).sqrt().clamp_min(1e-9)
    cap = (r - az) < (r - rho)
    cyl = (torch.where(cap, 0.0, qx / rho), torch.where(cap, 0.0, qy / rho), torch.where(cap, torch.sign(qz), 0.0))

    is_s, is_c = kind == CLASS_ID["sphere"], kind == CLASS_ID["cube"]
    normal = tuple(
        torch.where(obj, torch.where(is_s, a, torch.where(is_c, b_, e)), 1.0 if i == 2 else 0.0)
        for i, (a, b_, e) in enumerate(zip(sph, cub, cyl, strict=True))
    )
    albedo = tuple(torch.where(obj, pick(tab, idx), GROUND[i]) for i, tab in enumerate((g.red, g.green, g.blue)))
    metal = torch.where(obj, pick(g.metal, idx), 0.0)
    return Surface(p, normal, albedo, metal, kind)  # type: ignore[arg-type]


def tangent_frame(n: V3) -> tuple[V3, V3]:
    """An orthonormal pair perpendicular to n, without branches (Duff et al. 2017)."""
    sign = torch.where(n[2] >= 0, 1.0, -1.0)
    a = -1.0 / (sign + n[2])
    b = n[0] * n[1] * a
    t1 = (1.0 + sign * n[0] * n[0] * a, sign * b, -sign * n[0])
    t2 = (b, sign + n[1] * n[1] * a, -n[1])
    return t1, t2


# ------------------------------------------------------------------------------- render ---
@dataclass
class _Batch:
    scenes: list[Scene3D]
    spp: list[int]
    height: int
    width: int
    eye: V3
    fwd: V3
    right: V3
    up: V3
    tx: Tensor
    ty: Tensor
    lights: V3
    """Light positions, (B, 3 lights) each."""
    power: Tensor
    """Irradiance of each light at the scene centre, (B, 3)."""
    dist2: Tensor
    """Squared distance of each light to the scene centre, (B, 3)."""
    cdf: Tensor
    """Cumulative light-choice probabilities, (B, 3)."""
    ambient: Tensor
    bounce: Tensor
    has_bounce: Tensor
    objects: Objects

    def rows(self, k: int) -> _Batch:
        """The first k scenes (those that still take samples)."""
        def cut(x: Tensor) -> Tensor:
            return x[:k]

        def cut3(v: V3) -> V3:
            return (v[0][:k], v[1][:k], v[2][:k])

        return _Batch(self.scenes[:k], self.spp[:k], self.height, self.width, cut3(self.eye), cut3(self.fwd),
                      cut3(self.right), cut3(self.up), cut(self.tx), cut(self.ty), cut3(self.lights),
                      cut(self.power), cut(self.dist2), cut(self.cdf), cut(self.ambient), cut(self.bounce),
                      cut(self.has_bounce), self.objects.map(cut))


def _prepare(scenes: list[Scene3D], device: torch.device, max_samples: int | None,
             intensities: Tensor | None = None) -> _Batch:
    def col(values: list[float]) -> Tensor:
        return torch.tensor(values, dtype=torch.float32, device=device).unsqueeze(-1)

    bases = [camera_basis(s.camera) for s in scenes]
    fovs = [tan_half_fov(s.camera, s.width, s.height) for s in scenes]
    eye = tuple(col([s.camera.position[i] for s in scenes]) for i in range(3))
    fwd, right, up = (tuple(col([b[j][i] for b in bases]) for i in range(3)) for j in range(3))
    lights = tuple(torch.tensor([[lt.position[i] for lt in s.lights] for s in scenes], dtype=torch.float32,
                                device=device) for i in range(3))
    power = torch.tensor([[lt.intensity * LIGHT_GAIN.get(lt.name, 1.0) for lt in s.lights] for s in scenes],
                         dtype=torch.float32, device=device)
    ambient = col([s.ambient * AMBIENT_GAIN for s in scenes])
    if intensities is not None:
        gains = torch.tensor([LIGHT_GAIN.get(lt.name, 1.0) for lt in scenes[0].lights], device=device)
        power = intensities[:, 1:].to(device, torch.float32) * gains
        ambient = intensities[:, :1].to(device, torch.float32) * AMBIENT_GAIN
    dist2 = lights[0] ** 2 + lights[1] ** 2 + lights[2] ** 2
    total = power.sum(-1, keepdim=True)
    # The light each sample picks follows these probabilities, held fixed under autograd: the
    # derivative is then that of an importance-sampled estimate with a fixed proposal, whose
    # expectation is the derivative of the expected image (the pick itself is a step function).
    chosen, chosen_total = power.detach(), total.detach()
    prob = torch.where(chosen_total > 0, chosen / chosen_total.clamp_min(1e-12), 1.0 / power.shape[-1])
    cdf = prob.cumsum(-1)
    bounce = col([(1 - 0.5 ** s.bounces) * BOUNCE_GAIN for s in scenes]) * (total + ambient)
    spp = [max(1, min(s.samples, max_samples or s.samples)) for s in scenes]
    return _Batch(scenes, spp, scenes[0].height, scenes[0].width, eye, fwd, right, up,  # type: ignore[arg-type]
                  col([f[0] for f in fovs]), col([f[1] for f in fovs]), lights, power, dist2, cdf,  # type: ignore[arg-type]
                  ambient, bounce, col([float(s.bounces >= 1) for s in scenes]) > 0,
                  pack_objects(scenes, device))


def _primary(bt: _Batch, cols: Tensor, rows: Tensor) -> V3:
    """Unit view rays through continuous pixel positions, (B, P) each."""
    sx = (2.0 * cols / bt.width - 1.0) * bt.tx
    sy = (1.0 - 2.0 * rows / bt.height) * bt.ty
    return unit(tuple(bt.fwd[i] + sx * bt.right[i] + sy * bt.up[i] for i in range(3)))  # type: ignore[arg-type]


def _grid_pick(table: Tensor, idx: Tensor) -> Tensor:
    return torch.gather(table, 1, idx) if table.shape[1] else torch.zeros(idx.shape, device=idx.device)


def _direct_all(bt: _Batch, p: V3, n: V3) -> Tensor:
    """Unshadowed irradiance from all lights (for what a mirror sees), (B, P)."""
    total = torch.zeros_like(p[0])
    for li in range(bt.power.shape[1]):
        v = tuple(bt.lights[i][:, li:li + 1] - p[i] for i in range(3))
        d2 = dot(v, v).clamp_min(1e-6)  # type: ignore[arg-type]
        cos = (dot(n, v) * torch.rsqrt(d2)).clamp_min(0.0)  # type: ignore[arg-type]
        total = total + bt.power[:, li:li + 1] * bt.dist2[:, li:li + 1] / d2 * cos
    return total


def _reflection(bt: _Batch, surf: Surface, d: V3, rnd: Tensor, sel: Tensor) -> V3:
    """Radiance seen in the mirror direction of the ``sel`` pixels, (B, P) each (other pixels
    hold garbage). The selected pixels are packed to the front of each row, so that the
    rays keep the (scene, ray) layout at the width of the busiest scene."""
    width = int(sel.sum(1).max())
    cols = torch.sort(sel.to(torch.uint8), dim=1, descending=True, stable=True).indices[:, :width]
    live = torch.gather(sel, 1, cols)

    def take(v: Tensor) -> Tensor:
        return torch.gather(v, 1, cols)

    n = tuple(take(c) for c in surf.normal)
    dd = tuple(take(c) for c in d)
    p = tuple(take(c) + OFFSET * n[i] for i, c in enumerate(surf.point))
    dn = dot(dd, n)  # type: ignore[arg-type]
    g1, g2, g3 = (take(rnd[..., i]) - 0.5 for i in (6, 7, 8))
    rd = unit((dd[0] - 2 * dn * n[0] + GLOSS * g1, dd[1] - 2 * dn * n[1] + GLOSS * g2,
               dd[2] - 2 * dn * n[2] + GLOSS * g3))
    t, idx, what = closest(p, rd, bt.objects, active=live)  # type: ignore[arg-type]
    hit = surface(p, rd, t, idx, what, bt.objects, _grid_pick)  # type: ignore[arg-type]
    irr = _direct_all(bt, hit.point, hit.normal) + bt.ambient + bt.bounce
    sky = what == 0
    out = []
    for i in range(3):
        packed = torch.where(sky, bt.ambient * SKY[i], hit.albedo[i] * irr)
        out.append(torch.zeros_like(d[0]).scatter(1, cols, packed))
    return tuple(out)  # type: ignore[return-value]


def _sample(bt: _Batch, cols: Tensor, rows: Tensor, rnd: Tensor) -> V3:
    """One sample of every pixel of the chunk: linear RGB, (B, P) each."""
    d = _primary(bt, cols + rnd[..., 0], rows + rnd[..., 1])
    t, idx, what = closest(bt.eye, d, bt.objects)
    surf = surface(bt.eye, d, t, idx, what, bt.objects, _grid_pick)
    n = surf.normal
    start = tuple(surf.point[i] + OFFSET * n[i] for i in range(3))

    # one light, chosen in proportion to its strength, at a random point of its disc
    u = rnd[..., 2]
    li = (u.unsqueeze(-1) >= bt.cdf[:, None, :-1]).sum(-1)
    prob = torch.gather(torch.diff(bt.cdf, dim=-1, prepend=torch.zeros_like(bt.cdf[:, :1])), 1, li)
    rho, phi = LIGHT_RADIUS * rnd[..., 3].sqrt(), 2 * math.pi * rnd[..., 4]
    lp = (torch.gather(bt.lights[0], 1, li) + rho * phi.cos(), torch.gather(bt.lights[1], 1, li) + rho * phi.sin(),
          torch.gather(bt.lights[2], 1, li))
    v = (lp[0] - start[0], lp[1] - start[1], lp[2] - start[2])
    dist = dot(v, v).clamp_min(1e-6).sqrt()
    ldir = (v[0] / dist, v[1] / dist, v[2] / dist)
    cos_l = dot(n, ldir)
    lit = (cos_l > 0) & (what > 0)
    own = torch.where(what == 2, idx, -1)
    visible = lit & ~occluded(start, ldir, bt.objects, dist, active=lit, own=own)
    strength = torch.gather(bt.power, 1, li) * torch.gather(bt.dist2, 1, li) / (dist * dist) / prob.clamp_min(1e-12)
    strength = torch.where(visible, strength, 0.0)
    direct = strength * cos_l.clamp_min(0.0)

    # ambient sky through one cosine-distributed occlusion ray
    r1, r2 = rnd[..., 5], 2 * math.pi * rnd[..., 6]
    sr = r1.sqrt()
    t1, t2 = tangent_frame(n)
    lx, ly, lz = sr * r2.cos(), sr * r2.sin(), (1.0 - r1).clamp_min(0.0).sqrt()
    adir = tuple(t1[i] * lx + t2[i] * ly + n[i] * lz for i in range(3))
    up = (adir[2] > 0) & (what > 0)
    open_sky = up & ~occluded(start, adir, bt.objects, INF, active=up, own=own)  # type: ignore[arg-type]
    irr = direct + torch.where(open_sky, bt.ambient, 0.0) + bt.bounce

    # metal: dim diffuse, a highlight from the chosen light, and a mirror term
    half = unit((ldir[0] - d[0], ldir[1] - d[1], ldir[2] - d[2]))
    spec = SPECULAR * dot(n, half).clamp(0.0, 1.0).pow(SHININESS) * strength
    metal = surf.metal
    mirror_sel = (metal > 0) & bt.has_bounce
    mirror: list[Tensor] = [bt.ambient * SKY[i] * torch.ones_like(metal) for i in range(3)]
    if bool(mirror_sel.any()):
        refl = _reflection(bt, surf, d, rnd, mirror_sel)
        mirror = [torch.where(mirror_sel, refl[i], mirror[i]) for i in range(3)]
    sky = what == 0
    out = []
    for i in range(3):
        a = surf.albedo[i]
        diffuse = a * irr
        shiny = METAL_DIFFUSE * diffuse + (a + SPEC_WHITE * (1 - a)) * spec + METAL_REFLECT * a * mirror[i]
        out.append(torch.where(sky, bt.ambient * SKY[i], diffuse + metal * (shiny - diffuse)))
    return tuple(out)  # type: ignore[return-value]


def _render_same_size(scenes: list[Scene3D], device: torch.device, max_samples: int | None,
                      intensities: Tensor | None = None) -> list[tuple[Tensor, Tensor]]:
    """Render scenes of one size, ordered by samples per pixel (most first)."""
    bt = _prepare(scenes, device, max_samples, intensities)
    h, w = bt.height, bt.width
    b = len(scenes)
    rows, cols = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                                torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    rows, cols = rows.reshape(1, -1), cols.reshape(1, -1)
    n_pix = h * w
    chunk = max(256, PIXEL_ELEMENTS // max(1, b * max(1, bt.objects.count)))

    # the mask: pixel-centre rays, no jitter
    mask = torch.zeros((b, n_pix), dtype=torch.long, device=device)
    for p0 in range(0, n_pix, chunk):
        d = _primary(bt, cols[:, p0:p0 + chunk] + 0.5, rows[:, p0:p0 + chunk] + 0.5)
        _, idx, what = closest(bt.eye, d, bt.objects)
        mask[:, p0:p0 + chunk] = torch.where(what == 2, _grid_pick(bt.objects.kind, idx), 0)

    gens = []
    for s in scenes:
        gen = torch.Generator(device=device)
        gen.manual_seed(int(s.seed) & 0xFFFF_FFFF_FFFF_FFFF)
        gens.append(gen)
    acc = [torch.zeros((b, n_pix), device=device) for _ in range(3)]
    # light choice and occlusion direction are stratified over a pixel's samples, each with
    # its own random shift, so that noise falls as fast as a renderer's sampler would make it
    shifts = torch.stack([torch.rand((n_pix, len(STRATIFIED)), generator=gen, device=device) for gen in gens])
    spp_col = torch.tensor(bt.spp, dtype=torch.float32, device=device).view(b, 1, 1)
    for si in range(bt.spp[0]):
        k = sum(1 for n in bt.spp if n > si)
        sub = bt.rows(k) if k < b else bt
        rnd = torch.stack([torch.rand((n_pix, N_RANDOM), generator=gens[j], device=device) for j in range(k)])
        rnd[..., STRATIFIED] = torch.frac(shifts[:k] + (si + rnd[..., STRATIFIED]) / spp_col[:k])
        for p0 in range(0, n_pix, chunk):
            rgb = _sample(sub, cols[:, p0:p0 + chunk], rows[:, p0:p0 + chunk], rnd[:, p0:p0 + chunk])
            for i in range(3):
                acc[i][:k, p0:p0 + chunk] += rgb[i]
    spp = torch.tensor(bt.spp, dtype=torch.float32, device=device).unsqueeze(-1)
    img = linear_to_srgb(torch.stack([a / spp for a in acc], dim=1)).reshape(b, 3, h, w)
    mask = mask.reshape(b, h, w)
    return [(img[i].cpu(), mask[i].cpu()) for i in range(b)]


def check_scene(scene: Scene3D) -> None:
    """Raise ValueError for a scene this backend cannot draw (before any work starts)."""
    if scene.width < 1 or scene.height < 1:
        raise ValueError(f"image size {scene.width}x{scene.height} must be positive")
    if scene.samples < 1:
        raise ValueError(f"samples={scene.samples} must be >= 1")
    if scene.bounces < 0:
        raise ValueError(f"bounces={scene.bounces} must be >= 0")
    if not 0 < scene.camera.fov < 180:
        raise ValueError(f"fov={scene.camera.fov} must lie in (0, 180)")
    for name, value in (("ambient", scene.ambient), *((lt.name, lt.intensity) for lt in scene.lights)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"light {name} intensity {value} must be finite and >= 0")
    for o in scene.objects:
        if o.shape not in SHAPES or o.colour not in COLOURS or o.size not in SIZES or o.material not in MATERIALS:
            raise ValueError(f"unknown object {o.shape}/{o.colour}/{o.size}/{o.material}")
        if not (math.isfinite(o.x) and math.isfinite(o.y) and math.isfinite(o.rotation)):
            raise ValueError(f"object position ({o.x}, {o.y}) must be finite")


def render_batch(scenes: list[Scene3D], device: str | torch.device = "cpu", *, batch_size: int = 8,
                 max_samples: int | None = None, intensities: Tensor | None = None) -> list[tuple[Tensor, Tensor]]:
    """Images (3, H, W) float32 sRGB in [0, 1] and class masks (H, W) int64, in input order.

    Scenes are grouped by size and, within a size, by samples per pixel and object count so
    that a batch wastes little work on scenes that have finished sampling or on padding.

    ``intensities`` (n, 4), the scenes' ambient, key, fill and back strengths (``DIFFERENTIABLE``)
    as tensors equal to theirs, renders under autograd: the images are the same and carry the
    gradient to those tensors.
    """
    for s in scenes:
        check_scene(s)
    dev = torch.device(device)
    # fewest objects first within a size and sample count: a batch pads every scene to its
    # largest object count, and the bounding test costs rays x padded objects
    order = sorted(range(len(scenes)), key=lambda i: (scenes[i].height, scenes[i].width, -scenes[i].samples,
                                                      len(scenes[i].objects)))
    out: list[tuple[Tensor, Tensor] | None] = [None] * len(scenes)
    start = 0
    while start < len(order):
        first = scenes[order[start]]
        stop = start
        while (stop < len(order) and stop - start < batch_size
               and (scenes[order[stop]].height, scenes[order[stop]].width) == (first.height, first.width)):
            stop += 1
        chunk = order[start:stop]
        with torch.no_grad() if intensities is None else torch.enable_grad():
            rows = None if intensities is None else intensities[torch.tensor(chunk)]
            results = _render_same_size([scenes[i] for i in chunk], dev, max_samples, rows)
        for i, res in zip(chunk, results, strict=True):
            out[i] = res
        start = stop
    return out  # type: ignore[return-value]
