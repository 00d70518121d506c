"""Instance masks (0 background, k > 0 the k-th object) as class masks that keep touching objects apart.

One rule for rendered and real masks alike, so that a simulator's labels and a task's reading of a
real instance mask agree pixel for pixel: background 0, an object's interior 1, its boundary 2.
"""

from __future__ import annotations

import torch

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2


def boundary_classes(instances: torch.Tensor) -> torch.Tensor:
    """(H, W) object ids to class ids: a pixel of an object is ``BOUNDARY`` where one of its four
    neighbours inside the image holds another id (another object or background), else ``INTERIOR``.
    Two touching objects are thus parted by two boundary pixels; a border of the image is no boundary."""
    ids = instances.long()
    differs = torch.zeros_like(ids, dtype=torch.bool)
    vertical = ids[1:, :] != ids[:-1, :]
    horizontal = ids[:, 1:] != ids[:, :-1]
    differs[1:, :] |= vertical
    differs[:-1, :] |= vertical
    differs[:, 1:] |= horizontal
    differs[:, :-1] |= horizontal
    out = torch.full_like(ids, BACKGROUND)
    inside = ids > 0
    out[inside] = INTERIOR
    out[inside & differs] = BOUNDARY
    return out
