"""Datasets on disk: rendered examples as PNG images, PNG class masks and a JSON-lines index.

Layout (what segmentation trainers and ``load_dataset`` of the UNet task read):

    DIR/images/000000.png        RGB, 8 bit
    DIR/masks/000000.png         single channel, pixel value = class id (when the example has a mask)
    DIR/annotations.jsonl        one line per example: file names, label, target, objects (boxes), scene record
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from .records import Example


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
