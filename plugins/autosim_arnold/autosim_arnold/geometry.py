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
    x0 = max(math.floor(xy[:, 0].min()), 0)
    x1 = min(math.ceil(xy[:, 0].max()) + 1, width)
    y0 = max(math.floor(xy[:, 1].min()), 0)
    y1 = min(math.ceil(xy[:, 1].max()) + 1, height)
    if x0 >= x1 or y0 >= y1:
        return mask
    px, py = np.meshgrid(np.arange(x0, x1) + 0.5, np.arange(y0, y1) + 0.5)
    px, py = px.reshape(-1, 1), py.reshape(-1, 1)
    a, b, c = xy[faces[:, 0]], xy[faces[:, 1]], xy[faces[:, 2]]

    def edge(p: np.ndarray, q: np.ndarray) -> np.ndarray:  # (P, T): which side of p->q each pixel is on
        return (q[:, 0] - p[:, 0]) * (py - p[:, 1]) - (q[:, 1] - p[:, 1]) * (px - p[:, 0])

    e0, e1, e2 = edge(a, b), edge(b, c), edge(c, a)
    inside = ((e0 >= 0) & (e1 >= 0) & (e2 >= 0)) | ((e0 <= 0) & (e1 <= 0) & (e2 <= 0))
    inside &= np.abs(e0 + e1 + e2) > 0  # degenerate (edge-on) triangles cover nothing
    mask[y0:y1, x0:x1] = inside.any(axis=1).reshape(y1 - y0, x1 - x0)
    return mask


def mask_box(mask: np.ndarray) -> list[float] | None:
    """[x0, y0, x1, y1] of the True pixels (x1, y1 exclusive), None when there are none."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return None
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]
