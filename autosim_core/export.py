"""Datasets on disk, in three formats (``autosim generate --format``):

``png`` (what segmentation trainers and ``load_dataset`` of the UNet task read):

    DIR/images/000000.png        RGB, 8 bit
    DIR/masks/000000.png         single channel, pixel value = class id (when the example has a mask)
    DIR/annotations.jsonl        one line per example: file names, label, target, objects (boxes), scene record

``coco`` (detection): ``DIR/images/000000.png`` and ``DIR/annotations.json``.
``bop`` (detection): one scene folder ``DIR/000000/`` with ``rgb/000000.png``,
``scene_gt.json`` (``obj_id`` s) and ``scene_gt_info.json`` (``bbox_visib``, ``visib_fract``).

The detection formats read only what every ``Example`` may carry: ``objects`` with a
``category`` name and a ``box`` ``[x0, y0, x1, y1]`` in pixels (and ``visible_fraction``
where the simulator knows it); the category ids are 1, 2, ... in the order of the class names
given (the simulator's ``labels``). So any simulator that fills ``objects`` exports to them,
and no task is needed to write them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .records import Example
from .rundir import atomic_write


def image_to_png_array(image: torch.Tensor) -> np.ndarray:
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected an image tensor (C, H, W) with C = 1 or 3, got shape {tuple(image.shape)}")
    array = (image.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    return array[0].numpy() if array.shape[0] == 1 else array.permute(1, 2, 0).numpy()


def write_examples(examples: Iterable[Example], out_dir: str | Path, start: int = 0) -> int:
    """Append examples as ``start``, ``start + 1``, ...; returns how many were written."""
    from PIL import Image

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    written = 0
    with (out / "annotations.jsonl").open("a") as index:
        for i, example in enumerate(examples, start):
            name = f"{i:06d}.png"
            Image.fromarray(image_to_png_array(example.image)).save(out / "images" / name)
            row = {"image": f"images/{name}", "label": example.label, "objects": example.objects,
                   "scene": example.scene}
            if example.target is not None:
                row["target"] = example.target.detach().cpu().tolist()
            if example.mask is not None:
                if int(example.mask.max()) > 255 or int(example.mask.min()) < 0:
                    raise ValueError(f"example {i}: class ids must lie in 0..255 for PNG masks")
                (out / "masks").mkdir(exist_ok=True)
                Image.fromarray(example.mask.to(torch.uint8).cpu().numpy()).save(out / "masks" / name)
                row["mask"] = f"masks/{name}"
            index.write(json.dumps(row, default=str) + "\n")
            written += 1
    return written


FORMATS = ("png", "coco", "bop")


def _boxes(example: Example, where: Any, category_ids: dict[str, int]) -> list[tuple[int, list[float], dict]]:
    """(category id, [x0, y0, x1, y1], object) of an example's objects with a non-empty box,
    clipped to the image (COCO and BOP boxes lie inside their image; a renderer's box may not)."""
    height, width = float(example.image.shape[-2]), float(example.image.shape[-1])
    found = []
    for obj in example.objects:
        category = obj.get("category")
        if category not in category_ids:
            raise ValueError(f"example {where!r}: object category {category!r} is not one of {list(category_ids)}")
        box = obj.get("box")
        if box is None or len(box) != 4:
            raise ValueError(f"example {where!r}: object {category!r} has no box [x0, y0, x1, y1]")
        x0, y0, x1, y1 = (float(v) for v in box)
        x0, x1 = min(max(x0, 0.0), width), min(max(x1, 0.0), width)
        y0, y1 = min(max(y0, 0.0), height), min(max(y1, 0.0), height)
        if x1 > x0 and y1 > y0:  # an empty box is no valid annotation in either format
            found.append((category_ids[category], [x0, y0, x1, y1], obj))
    return found


class DatasetWriter:
    """Writes examples one batch at a time in one of ``FORMATS``; ``close`` writes the index
    files the format keeps for the end (the JSON files of ``coco`` and ``bop``).

    ``classes``: the category names of objects, in id order (ids start at 1); needed by the
    detection formats."""

    def __init__(self, out_dir: str | Path, fmt: str, classes: Sequence[str] | None = None) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
        if fmt != "png" and not classes:
            raise ValueError(f"format {fmt!r} needs the object classes (a simulator that declares labels)")
        self.out = Path(out_dir)
        self.format = fmt
        self.category_ids = {name: i for i, name in enumerate(classes or (), 1)}
        if classes is not None and len(self.category_ids) != len(classes):
            raise ValueError(f"classes must be distinct, got {list(classes)}")
        self.count = 0
        self._images: list[dict[str, Any]] = []
        self._annotations: list[dict[str, Any]] = []
        self._scene_gt: dict[str, list[dict[str, Any]]] = {}
        self._scene_info: dict[str, list[dict[str, Any]]] = {}

    def write(self, examples: Sequence[Example]) -> int:
        if self.format == "png":
            written = write_examples(examples, self.out, start=self.count)
            self.count += written
            return written
        from PIL import Image

        folder = self.out / "images" if self.format == "coco" else self.out / "000000" / "rgb"
        folder.mkdir(parents=True, exist_ok=True)
        for example in examples:
            index = self.count
            where = (example.scene or {}).get("id", index)
            Image.fromarray(image_to_png_array(example.image)).save(folder / f"{index:06d}.png")
            height, width = int(example.image.shape[-2]), int(example.image.shape[-1])
            boxes = _boxes(example, where, self.category_ids)
            if self.format == "coco":
                self._images.append({"id": index + 1, "file_name": f"{index:06d}.png", "width": width,
                                     "height": height})
                for category_id, (x0, y0, x1, y1), obj in boxes:
                    ann = {"id": len(self._annotations) + 1, "image_id": index + 1, "category_id": category_id,
                           "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0}
                    if "visible_fraction" in obj:
                        ann["visible_fraction"] = float(obj["visible_fraction"])
                    self._annotations.append(ann)
            else:
                self._scene_gt[str(index)] = [{"obj_id": category_id} for category_id, _, _ in boxes]
                self._scene_info[str(index)] = [
                    {"bbox_visib": [x0, y0, x1 - x0, y1 - y0], "bbox_obj": [x0, y0, x1 - x0, y1 - y0],
                     "visib_fract": float(obj.get("visible_fraction", 1.0))}
                    for _, (x0, y0, x1, y1), obj in boxes]
            self.count += 1
        return len(examples)

    def close(self) -> None:
        if self.format == "coco":
            _write_json_atomic(self.out / "annotations.json", {
                "info": {"description": "autosim renders"}, "licenses": [], "images": self._images,
                "annotations": self._annotations,
                "categories": [{"id": i, "name": name, "supercategory": "object"}
                               for name, i in self.category_ids.items()]})
        elif self.format == "bop":
            _write_json_atomic(self.out / "000000" / "scene_gt.json", self._scene_gt)
            _write_json_atomic(self.out / "000000" / "scene_gt_info.json", self._scene_info)

    def class_ids(self) -> dict[str, str]:
        """Category id -> name, as the manifest records it (BOP files hold ids only)."""
        return {str(i): name for name, i in self.category_ids.items()}


def _write_json_atomic(path: Path, data: Any) -> None:
    text = json.dumps(data, default=str) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def package_versions(*names: str) -> dict[str, str]:
    """Installed versions of the named distributions (those installed)."""
    from importlib import metadata

    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found
