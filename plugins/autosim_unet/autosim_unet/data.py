"""Segmentation datasets on disk: ``images/NAME.png`` (RGB) + ``masks/NAME.png`` (class ids).

A mask is a single-channel PNG (mode L, or P whose palette indices are the class ids) whose
pixel value is the class id of that pixel; 0 is background. It is the layout the core's
``autosim generate`` (``autosim_core.export.write_examples``) writes, so rendered data can be
exported and loaded back as real data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from autosim_core.records import Example
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class DatasetError(ValueError):
    """A dataset folder that cannot be read as images + masks; the message names the file."""


def _files(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.suffix.lower() in suffixes:
            if f.stem in found:
                raise DatasetError(f"{folder}: two files named {f.stem!r} ({found[f.stem].name}, {f.name})")
            found[f.stem] = f
    return found


def read_image(path: Path) -> torch.Tensor:
    """RGB image as float (3, H, W) in [0, 1]; grey and RGBA images are converted to RGB."""
    with Image.open(path) as im:
        array = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def read_mask(path: Path) -> torch.Tensor:
    """Class-id mask as int64 (H, W)."""
    with Image.open(path) as im:
        if im.mode not in ("L", "P", "I", "I;16", "1"):
            raise DatasetError(f"{path}: mask has mode {im.mode!r}; it must be single-channel "
                               "(grey levels or palette indices = class ids), not colour")
        array = np.asarray(im, dtype=np.int64)
    return torch.from_numpy(array.copy())


def load_folder(path: str | Path, num_classes: int, *, ignore_index: int | None = None) -> list[Example]:
    """Examples from ``path/images/*.png`` and ``path/masks/*.png``, paired by file name."""
    root = Path(path)
    images_dir, masks_dir = root / "images", root / "masks"
    for d in (root, images_dir, masks_dir):
        if not d.is_dir():
            raise DatasetError(f"{d}: folder not found (expected {root}/images/NAME.png and {root}/masks/NAME.png)")
    images = _files(images_dir, IMAGE_SUFFIXES)
    # Masks must be lossless: JPEG artefacts would invent class ids at edges.
    masks = _files(masks_dir, (".png",))
    if not images:
        raise DatasetError(f"{images_dir}: no images (.png, .jpg)")
    no_mask = sorted(set(images) - set(masks))
    no_image = sorted(set(masks) - set(images))
    if no_mask or no_image:
        parts = []
        if no_mask:
            parts.append(f"images without a mask in {masks_dir}: {', '.join(no_mask[:5])}"
                         + (f" (+{len(no_mask) - 5} more)" if len(no_mask) > 5 else ""))
        if no_image:
            parts.append(f"masks without an image in {images_dir}: {', '.join(no_image[:5])}"
                         + (f" (+{len(no_image) - 5} more)" if len(no_image) > 5 else ""))
        raise DatasetError("; ".join(parts))

    examples = []
    for name in sorted(images):
        image = read_image(images[name])
        mask = read_mask(masks[name])
        if tuple(mask.shape) != tuple(image.shape[1:]):
            raise DatasetError(f"{masks[name]}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                               f"{image.shape[2]}x{image.shape[1]} (width x height)")
        labelled = mask if ignore_index is None else mask[mask != ignore_index]
        if labelled.numel() and int(labelled.max()) >= num_classes:
            bad = sorted({int(v) for v in labelled.unique() if v >= num_classes})
            hint = "" if ignore_index is not None else " (or set task.settings.ignore_index for void pixels)"
            raise DatasetError(f"{masks[name]}: class ids {bad} but num_classes = {num_classes}; "
                               f"ids must lie in [0, {num_classes}){hint}")
        examples.append(Example(image=image, mask=mask, scene={"id": name}))
    return examples
