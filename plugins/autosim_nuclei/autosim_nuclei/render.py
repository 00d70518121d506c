"""Drawing a tile: textured, possibly touching elliptical nuclei on a graded background, blurred by a
Gaussian point-spread function, with shot and read noise, digitised to the tile's grey levels; the
mask marks exactly the drawn nuclei (with ``boundary``, their outlines as a class of their own).

Every random number of a tile comes from a generator seeded by its scene's ``seed``, so a record
renders to the same tile every time. A nucleus is an ellipse of area pi * r^2 (r drawn about the
tile's ``radius``) with axes r * sqrt(e) and r / sqrt(e); where two overlap, the one drawn later
lies on top in both the image and the mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from autosim_core.instances import boundary_classes
from autosim_core.records import Example

from .params import NucleiSettings

PLACEMENT_TRIES = 20
"""Draws of a centre per nucleus before it is left out: centres closer than TOUCHING of the two
radii are redrawn, so nuclei touch and overlap a little, as they do in a dense field, but do not pile up."""
TOUCHING = 0.8


@dataclass
class Tile:
    """A rendered tile before noise: what the tests check the mask against."""

    clean: torch.Tensor
    """(H, W) intensities without blur and noise."""
    instances: torch.Tensor
    """(H, W) int64: 0 background, i the i-th drawn nucleus (on top where nuclei overlap)."""
    image: torch.Tensor
    """(H, W) the final intensities in [0, 1]: blurred, noisy, clipped."""


def _smooth_noise(size: int, scale: float, generator: torch.Generator) -> torch.Tensor:
    """White noise smoothed by a Gaussian of ``scale`` px, rescaled to unit standard deviation."""
    noise = torch.randn(size, size, generator=generator)
    smooth = _gaussian_blur(noise, scale)
    return (smooth - smooth.mean()) / smooth.std().clamp_min(1e-8)


def _gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """(H, W) convolved with a normalised Gaussian of ``sigma`` px (reflected at the edges)."""
    if sigma < 0.2:
        return image
    radius = max(1, math.ceil(3 * sigma))
    radius = min(radius, image.shape[-1] - 1)
    x = torch.arange(-radius, radius + 1, dtype=image.dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = F.pad(image[None, None], (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1))
    out = F.conv2d(out, kernel.view(1, 1, -1, 1))
    return out[0, 0]


def draw_tile(scene: dict[str, Any], settings: NucleiSettings) -> Tile:
    """The tile of one scene record (its parameters and ``seed``)."""
    n = settings.size
    g = torch.Generator().manual_seed(int(scene["seed"]))
    count = max(0, round(float(scene["count"])))
    yy, xx = torch.meshgrid(torch.arange(n, dtype=torch.float32) + 0.5, torch.arange(n, dtype=torch.float32) + 0.5,
                            indexing="ij")

    radii = float(scene["radius"]) * torch.exp(float(scene["radius_spread"]) * torch.randn(count, generator=g))
    radii = radii.clamp(1.0, n / 2)
    # Each nucleus's elongation varies about the tile's by a factor in [0.5, 1.5] of its excess over 1.
    elongation = 1.0 + (float(scene["elongation"]) - 1.0) * (0.5 + torch.rand(count, generator=g))
    # Major axes spread uniformly over orientation_spread of the half circle about the tile's orientation.
    spread = float(scene["orientation_spread"])
    angles = math.radians(float(scene["orientation"])) + math.pi * spread * (torch.rand(count, generator=g) - 0.5)
    log_brightness = float(scene["brightness_spread"]) * torch.randn(count, generator=g)
    brightness = float(scene["brightness"]) * torch.exp(log_brightness - 0.5 * float(scene["brightness_spread"]) ** 2)

    placed: list[tuple[float, float, int]] = []
    for i in range(count):
        r = float(radii[i])
        for _ in range(PLACEMENT_TRIES):
            # Centres may lie up to half a radius outside the tile: nuclei cut by its edge, as in a real tile.
            cx, cy = (torch.rand(2, generator=g) * (n + r) - r / 2).tolist()
            if all((cx - px) ** 2 + (cy - py) ** 2 >= (TOUCHING * (r + float(radii[j]))) ** 2 for px, py, j in placed):
                placed.append((cx, cy, i))
                break

    instances = torch.zeros(n, n, dtype=torch.long)
    level = torch.zeros(n, n)
    for k, (cx, cy, i) in enumerate(placed, start=1):
        e, r, a = float(elongation[i]), float(radii[i]), float(angles[i])
        major, minor = r * math.sqrt(e), r / math.sqrt(e)
        dx, dy = xx - cx, yy - cy
        u = (dx * math.cos(a) + dy * math.sin(a)) / major
        v = (-dx * math.sin(a) + dy * math.cos(a)) / minor
        inside = u * u + v * v <= 1.0
        instances[inside] = k
        level[inside] = float(brightness[i])

    texture = _smooth_noise(n, settings.texture_scale, g)
    nuclei = (level * (1.0 + float(scene["texture"]) * texture)).clamp_min(0.0)
    phi = 2 * math.pi * float(torch.rand((), generator=g))
    ramp = ((xx - n / 2) * math.cos(phi) + (yy - n / 2) * math.sin(phi)) / n          # in [-0.71, 0.71]
    background = (float(scene["background"]) + float(scene["gradient"]) * ramp).clamp_min(0.0)
    clean = background + nuclei * (instances > 0)

    blurred = _gaussian_blur(clean, float(scene["blur"])).clamp_min(0.0)
    photons = float(scene["photons"])
    noisy = torch.poisson(blurred * photons, generator=g) / photons
    noisy = noisy + float(scene["read_noise"]) * torch.randn(n, n, generator=g)
    # The camera's digitisation: `levels` grey levels from 0 to 1 (the real image's range after normalisation).
    levels = max(1.0, float(scene["levels"]))
    image = torch.round(noisy.clamp(0.0, 1.0) * levels) / levels
    return Tile(clean=clean, instances=instances, image=image)


def render_scenes(scenes: list[dict[str, Any]], settings: NucleiSettings) -> list[Example]:
    out = []
    for scene in scenes:
        try:
            tile = draw_tile(scene, settings)
        except Exception as exc:
            raise RuntimeError(f"scene {scene.get('id')!r}: {exc}") from exc
        image = tile.image[None].expand(settings.channels, -1, -1).contiguous()
        mask = boundary_classes(tile.instances) if settings.boundary else (tile.instances > 0).long()
        out.append(Example(image=image, mask=mask, scene=scene))
    return out
