"""Detection targets as one padded tensor, and images letterboxed to the network's square input.

A batch's targets are a float tensor (B, M, 5): per image up to M objects as
``[x0, y0, x1, y1, class_id]`` in pixels of the network input (after letterboxing); rows past
an image's objects are padding with ``class_id = -1`` (and a zero box). M >= 1 always, so an
image without objects still has a row. One tensor (rather than a list of dicts) keeps
``Batch.select``, device moves and torch.func transforms simple.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

PAD = -1.0
GREY = 0.5


def letterbox(image: torch.Tensor, size: int) -> tuple[torch.Tensor, float, tuple[float, float]]:
    """``image`` (C, H, W) scaled to fit ``size`` x ``size`` with its aspect ratio kept and the
    rest padded grey. Returns the square image, the scale and the (x, y) offset of the content,
    so a box maps as ``box * scale + offset``."""
    if image.dim() != 3:
        raise ValueError(f"expected an image (C, H, W), got shape {tuple(image.shape)}")
    c, h, w = image.shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) != (h, w):
        image = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False,
                              antialias=scale < 1)[0]
    if (nh, nw) == (size, size):
        return image, scale, (0.0, 0.0)
    top, left = (size - nh) // 2, (size - nw) // 2
    out = torch.full((c, size, size), GREY, dtype=image.dtype)
    out[:, top:top + nh, left:left + nw] = image
    return out, scale, (float(left), float(top))


def pack_targets(per_image: Sequence[torch.Tensor]) -> torch.Tensor:
    """(n_i, 5) rows ``[x0, y0, x1, y1, class_id]`` per image -> the padded (B, M, 5) tensor."""
    m = max([1, *(int(t.shape[0]) for t in per_image)])
    out = torch.zeros(len(per_image), m, 5)
    out[:, :, 4] = PAD
    for i, rows in enumerate(per_image):
        if rows.numel():
            out[i, : rows.shape[0]] = rows.float()
    return out


def unpack_targets(targets: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """The padded tensor -> per image ``{"boxes": (n, 4), "labels": (n,)}`` (torchvision's form)."""
    out = []
    for rows in targets:
        keep = rows[:, 4] >= 0
        out.append({"boxes": rows[keep, :4], "labels": rows[keep, 4].long()})
    return out


def object_rows(objects: list[dict[str, Any]], classes: Sequence[str], scale: float,
                offset: tuple[float, float], where: Any, min_visible_fraction: float = 0.0) -> torch.Tensor:
    """An example's ``objects`` as (n, 5) target rows in letterboxed pixels.

    Each object needs ``"category"`` (a name in ``classes``) and ``"box"`` ``[x0, y0, x1, y1]``
    in the example's pixels. Objects whose ``"visible_fraction"`` is below
    ``min_visible_fraction`` are left out (BOP's convention for heavily occluded objects).
    """
    index = {name: i for i, name in enumerate(classes)}
    rows = []
    for obj in objects:
        if float(obj.get("visible_fraction", 1.0)) < min_visible_fraction:
            continue
        name = obj.get("category")
        if name not in index:
            raise ValueError(f"example {where!r}: object category {name!r} is not one of the task's "
                             f"classes {list(classes)}; set [task.settings] classes")
        box = obj.get("box")
        if box is None or len(box) != 4:
            raise ValueError(f"example {where!r}: object {name!r} has no box [x0, y0, x1, y1]")
        x0, y0, x1, y1 = (float(v) for v in box)
        if not (x1 > x0 and y1 > y0):
            continue
        rows.append([x0 * scale + offset[0], y0 * scale + offset[1], x1 * scale + offset[0],
                     y1 * scale + offset[1], float(index[name])])
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 5)
