"""Pinhole projection of the scene camera and a small triangle rasteriser for full silhouettes.

The visible fraction of an object is its pixels in the object-index pass over the pixels of its
whole silhouette, occluders removed (BOP's ``visib_fract``). The silhouette is rasterised here
from the object's triangles with the renderer's camera: pixel centres inside any triangle.
"""

from __future__ import annotations

import math

import numpy as np

from .scene import Camera


def camera_frame(camera: Camera) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Position, right, up and forward unit vectors (world z is up, as Blender's track-to)."""
    position = np.array(camera.position, dtype=np.float64)
    forward = np.array(camera.look_at, dtype=np.float64) - position
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    return position, right, up, forward


def project(points: np.ndarray, camera: Camera, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (N, 2) as (x, y), y down, of world points (N, 3), and their depths (N,)."""
    position, right, up, forward = camera_frame(camera)
    rel = points - position
    depth = rel @ forward
    focal = (width / 2) / math.tan(math.radians(camera.fov) / 2)
    x = width / 2 + focal * (rel @ right) / depth
    y = height / 2 - focal * (rel @ up) / depth
    return np.stack([x, y], axis=1), depth


def silhouette(vertices: np.ndarray, faces: np.ndarray, camera: Camera, width: int, height: int) -> np.ndarray:
    """Boolean (H, W): pixel centres covered by any of the triangles (all in front of the camera)."""
    xy, depth = project(vertices, camera, width, height)
    mask = np.zeros((height, width), dtype=bool)
    if (depth <= 0).any():
        raise ValueError("an object reaches behind the camera")
    tri = xy[faces]  # (T, 3, 2)
    # Each triangle is tested only against the pixel centres inside its own bounding box: at the
    # image sizes used, most triangles cover a pixel or two, so this is a few candidates each.
    lo = np.clip(np.ceil(tri.min(axis=1) - 0.5), 0, [width, height]).astype(np.int64)
    hi = np.clip(np.floor(tri.max(axis=1) - 0.5) + 1, 0, [width, height]).astype(np.int64)
    span = np.maximum(hi - lo, 0)
    counts = span[:, 0] * span[:, 1]
    if counts.sum() == 0:
        return mask
    t = np.repeat(np.arange(len(tri)), counts)
    k = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    cols = lo[t, 0] + k % np.maximum(span[t, 0], 1)
    rows = lo[t, 1] + k // np.maximum(span[t, 0], 1)
    px, py = cols + 0.5, rows + 0.5
    a, b, c = tri[t, 0], tri[t, 1], tri[t, 2]

    def edge(p: np.ndarray, q: np.ndarray) -> np.ndarray:  # which side of p->q each candidate lies on
        return (q[:, 0] - p[:, 0]) * (py - p[:, 1]) - (q[:, 1] - p[:, 1]) * (px - p[:, 0])

    e0, e1, e2 = edge(a, b), edge(b, c), edge(c, a)
    inside = ((e0 >= 0) & (e1 >= 0) & (e2 >= 0)) | ((e0 <= 0) & (e1 <= 0) & (e2 <= 0))
    inside &= np.abs(e0 + e1 + e2) > 0  # degenerate (edge-on) triangles cover nothing
    mask[rows[inside], cols[inside]] = True
    return mask


def mask_box(mask: np.ndarray) -> list[float] | None:
    """[x0, y0, x1, y1] of the True pixels (x1, y1 exclusive), None when there are none."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return None
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]
