"""Detection targets as one padded tensor, and images letterboxed to the network's square input.

A batch's targets are a float tensor (B, M, 5): per image up to M objects as
``[x0, y0, x1, y1, class_id]`` in pixels of the network input (after letterboxing); rows past
an image's objects are padding with ``class_id = -1`` (and a zero box). M >= 1 always, so an
image without objects still has a row. One tensor (rather than a list of dicts) keeps
``Batch.select``, device moves and torch.func transforms simple.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

PAD = -1.0
GREY = 0.5
# Pixels a box may reach past the image before clipping it counts as moving it (rounding of
# boxes scaled with their image).
CLIP_TOLERANCE = 1e-3
_CLIP_REPORTED: list[str] = []


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


def clip_box(box: Any, width: float, height: float, where: str) -> tuple[list[float], bool]:
    """``box`` [x0, y0, x1, y1] clipped to an image of ``width`` x ``height`` pixels (``math.inf``
    for either: no bound on that side, and none at 0 either), and whether
    clipping moved it (by more than ``CLIP_TOLERANCE``, so a box whose edge is the image's edge
    up to rounding counts as inside).

    A box that is no box (not four finite numbers), or that has no area once clipped (wholly
    outside the image, zero width or height, or corners swapped) is an error naming ``where``:
    there is nothing in the image to detect, so such a record is a bug of whoever wrote it.
    """
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: box {box!r} is not [x0, y0, x1, y1]") from None
    width, height = float(width), float(height)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise ValueError(f"{where}: box {[x0, y0, x1, y1]} is not finite")
    low_x, low_y = (0.0 if math.isfinite(width) else -math.inf), (0.0 if math.isfinite(height) else -math.inf)
    cx0, cy0 = min(max(x0, low_x), width), min(max(y0, low_y), height)
    cx1, cy1 = min(max(x1, low_x), width), min(max(y1, low_y), height)
    if not (cx1 > cx0 and cy1 > cy0):
        inside = "" if (cx0, cy0, cx1, cy1) == (x0, y0, x1, y1) else " once clipped to the image"
        size = f"; the image is {width:g} x {height:g}" if math.isfinite(width) else ""
        raise ValueError(f"{where}: box {[x0, y0, x1, y1]} has no area{inside} (x1 > x0 and y1 > y0 needed{size})")
    moved = max(abs(cx0 - x0), abs(cy0 - y0), abs(cx1 - x1), abs(cy1 - y1)) > CLIP_TOLERANCE
    return [cx0, cy0, cx1, cy1], moved


def _report_clipped(where: str, box: Any, clipped: list[float]) -> None:
    # Once per process: a renderer that lets objects leave the frame clips in every batch.
    if _CLIP_REPORTED:
        return
    _CLIP_REPORTED.append(where)
    logging.getLogger("autosim").warning("%s: box %s reaches outside the image; clipped to %s (further clipped "
                                         "boxes are not reported)", where, [float(v) for v in box], clipped)


def object_rows(objects: list[dict[str, Any]], classes: Sequence[str], scale: float,
                offset: tuple[float, float], where: Any, min_visible_fraction: float = 0.0, *,
                image_size: tuple[int, int] | None = None,
                classes_source: str = "[task.settings] classes") -> torch.Tensor:
    """An example's ``objects`` as (n, 5) target rows in letterboxed pixels.

    Each object needs ``"category"`` (a name in ``classes``; ``classes_source`` says where the
    list came from, for the error) and ``"box"`` ``[x0, y0, x1, y1]`` in the example's pixels.
    With ``image_size`` (H, W) a box reaching outside the image is clipped to it (reported once
    per process) and one with no area inside it is an error (``clip_box``); without it only the
    area is checked. Objects whose ``"visible_fraction"`` is below ``min_visible_fraction`` are
    left out (BOP's convention for heavily occluded objects).
    """
    index = {name: i for i, name in enumerate(classes)}
    height, width = image_size if image_size is not None else (math.inf, math.inf)
    rows = []
    for obj in objects:
        if float(obj.get("visible_fraction", 1.0)) < min_visible_fraction:
            continue
        name = obj.get("category")
        if name not in index:
            raise ValueError(f"example {where!r}: object category {name!r} is not one of the task's "
                             f"classes {list(classes)} (from {classes_source})")
        box = obj.get("box")
        if box is None or len(box) != 4:
            raise ValueError(f"example {where!r}: object {name!r} has no box [x0, y0, x1, y1]")
        (x0, y0, x1, y1), moved = clip_box(box, width, height, f"example {where!r}: object {name!r}")
        if moved:
            _report_clipped(f"example {where!r}: object {name!r}", box, [x0, y0, x1, y1])
        rows.append([x0 * scale + offset[0], y0 * scale + offset[1], x1 * scale + offset[0],
                     y1 * scale + offset[1], float(index[name])])
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 5)
