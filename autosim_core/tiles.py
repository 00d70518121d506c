"""Real images cut into tiles: the ``tiles`` table of a ``[validation]`` or ``[test]`` folder set.

A tile lies wholly inside the region, so two sets whose regions do not overlap (the left and the
right half of the same images) share no pixel. Tiles start at the region's top-left pixel and step
by ``stride``; a strip narrower than a tile at the right or bottom edge is left out.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .records import Example

if TYPE_CHECKING:
    from .config import Tiles


def region_pixels(tiles: Tiles, width: int, height: int) -> tuple[int, int, int, int]:
    """The region as whole pixels ``(x0, y0, x1, y1)`` (x1, y1 exclusive) of a width x height image:
    the pixels whose every part lies inside the fractions."""
    left, top, right, bottom = tiles.region
    return (math.ceil(left * width - 1e-9), math.ceil(top * height - 1e-9),
            math.floor(right * width + 1e-9), math.floor(bottom * height + 1e-9))


def tile_corners(tiles: Tiles, width: int, height: int) -> list[tuple[int, int]]:
    """Top-left corners ``(x, y)`` of the tiles of a width x height image, row by row."""
    x0, y0, x1, y1 = region_pixels(tiles, width, height)
    stride = tiles.stride or tiles.size
    return [(x, y) for y in range(y0, y1 - tiles.size + 1, stride) for x in range(x0, x1 - tiles.size + 1, stride)]


def cut_tiles(examples: list[Example], tiles: Tiles, key: str) -> list[Example]:
    """Each example's image (C, H, W) and mask (H, W) cut into tiles; the scene id names the image and
    the tile's corner (``NAME@x,y``). One-line ``ValueError`` for an example without a mask, one with
    objects or a target (a tile cannot cut those), or an image the region holds no tile of."""
    out = []
    for i, example in enumerate(examples):
        name = (example.scene or {}).get("id", i)
        if example.mask is None or example.objects or example.target is not None:
            raise ValueError(f"{key}.tiles: example {name!r} is not an image with a label mask; only those are "
                             "cut into tiles")
        height, width = (int(n) for n in example.mask.shape[-2:])
        corners = tile_corners(tiles, width, height)
        if not corners:
            x0, y0, x1, y1 = region_pixels(tiles, width, height)
            raise ValueError(f"{key}.tiles: no {tiles.size} px tile fits the region {list(tiles.region)} of "
                             f"{name!r} ({x1 - x0}x{y1 - y0} of its {width}x{height} pixels)")
        for x, y in corners:
            window = (slice(y, y + tiles.size), slice(x, x + tiles.size))
            out.append(Example(image=example.image[(..., *window)].contiguous(),
                               mask=example.mask[window].contiguous(),
                               scene={**(example.scene or {}), "id": f"{name}@{x},{y}"}))
    return out
