"""Camera maths shared by the backends, the boxes and the tests (pure Python, no torch).

Image coordinates are continuous: pixel (row i, column j) covers [j, j+1) x [i, i+1) and
is sampled around (j + 0.5, i + 0.5), as ``scene.py`` prescribes.
"""

from __future__ import annotations

import math

from .scene import Camera, SceneObject, Vec3


def _sub(a: Vec3, b: Vec3) -> Vec3:
    return (a[0] - b[0], a[1] - b[1], a[2] - b[2])


def _dot(a: Vec3, b: Vec3) -> float:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _cross(a: Vec3, b: Vec3) -> Vec3:
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def _unit(a: Vec3) -> Vec3:
    n = math.sqrt(_dot(a, a))
    return (a[0] / n, a[1] / n, a[2] / n)


def camera_basis(camera: Camera) -> tuple[Vec3, Vec3, Vec3]:
    """(forward, right, up) with world z as up."""
    forward = _unit(_sub(camera.look_at, camera.position))
    right = _unit(_cross(forward, (0.0, 0.0, 1.0)))
    up = _cross(right, forward)
    return forward, right, up


def tan_half_fov(camera: Camera, width: int, height: int) -> tuple[float, float]:
    """Horizontal and vertical tan(fov/2); ``fov`` is horizontal."""
    tx = math.tan(math.radians(camera.fov) / 2.0)
    return tx, tx * height / width


def project(camera: Camera, width: int, height: int, point: Vec3) -> tuple[float, float, float]:
    """(column, row, depth) of a world point; depth <= 0 means behind the camera."""
    forward, right, up = camera_basis(camera)
    tx, ty = tan_half_fov(camera, width, height)
    v = _sub(point, camera.position)
    z = _dot(v, forward)
    if z <= 1e-9:
        return math.nan, math.nan, z
    col = (_dot(v, right) / z / tx + 1.0) * width / 2.0
    row = (1.0 - _dot(v, up) / z / ty) * height / 2.0
    return col, row, z


def outline(obj: SceneObject, camera: Camera, n: int = 48) -> list[Vec3]:
    """World points whose projections bound the object's silhouette.

    Cube: its 8 corners. Cylinder: its two rims. Sphere: its exact silhouette circle seen
    from the camera (the tangent points of the view cone), not its equator.
    """
    r = obj.radius
    if obj.shape == "cube":
        c, s = math.cos(math.radians(obj.rotation)), math.sin(math.radians(obj.rotation))
        return [(obj.x + c * dx - s * dy, obj.y + s * dx + c * dy, r + dz)
                for dx in (-r, r) for dy in (-r, r) for dz in (-r, r)]
    angles = [2 * math.pi * k / n for k in range(n)]
    if obj.shape == "cylinder":
        return [(obj.x + r * math.cos(a), obj.y + r * math.sin(a), z) for z in (0.0, 2 * r) for a in angles]
    centre = (obj.x, obj.y, r)
    axis = _sub(centre, camera.position)
    d = math.sqrt(_dot(axis, axis))
    if d <= r:
        return []
    axis = _unit(axis)
    ring_centre = tuple(camera.position[i] + axis[i] * (d - r * r / d) for i in range(3))
    ring_radius = r * math.sqrt(d * d - r * r) / d
    e1 = _unit(_cross(axis, (0.0, 0.0, 1.0)) if abs(axis[2]) < 0.99 else _cross(axis, (1.0, 0.0, 0.0)))
    e2 = _cross(axis, e1)
    return [tuple(ring_centre[i] + ring_radius * (math.cos(a) * e1[i] + math.sin(a) * e2[i]) for i in range(3))
            for a in angles]  # type: ignore[misc]


def projected_box(obj: SceneObject, camera: Camera, width: int, height: int) -> list[float] | None:
    """[x0, y0, x1, y1] of the object's silhouette clipped to the image, in pixels; None when
    it falls outside the frame or behind the camera. Occlusion is not considered here."""
    pts = [project(camera, width, height, p) for p in outline(obj, camera)]
    if not pts or any(p[2] <= 1e-9 for p in pts):
        return None
    cols, rows = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = max(min(cols), 0.0), min(max(cols), float(width))
    y0, y1 = max(min(rows), 0.0), min(max(rows), float(height))
    if x1 <= x0 or y1 <= y0:
        return None
    return [x0, y0, x1, y1]
