"""Segmentation datasets on disk: ``images/NAME.png`` (RGB) + ``masks/NAME.png`` (class ids), or one
image file and its mask file. PNG, JPEG (images only) and TIFF (with tifffile installed) are read.

A mask is a single-channel PNG (mode L, or P whose palette indices are the class ids) whose
pixel value is the class id of that pixel; 0 is background. It is the layout the core's
``autosim generate`` (``autosim_core.export.write_examples``) writes, so rendered data can be
exported and loaded back as real data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from autosim_core.instances import boundary_classes
from autosim_core.records import Example
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
MASK_SUFFIXES = (".png", ".tif", ".tiff")
"""Masks must be lossless: JPEG artefacts would invent class ids at edges."""
TIFF_SUFFIXES = (".tif", ".tiff")
PERCENTILES = (1.0, 99.8)
"""The intensities ``intensity = "percentile"`` maps to 0 and 1: the usual normalisation of
fluorescence microscopy, where a few saturated pixels would otherwise set the scale."""


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


def _read_array(path: Path, image: bool) -> np.ndarray:
    """The pixels of a PNG/JPEG (Pillow) or TIFF (tifffile) file, in the file's own type; an
    ``image`` in a palette or other colour mode is converted to RGB (a mask keeps its indices)."""
    if path.suffix.lower() in TIFF_SUFFIXES:
        try:
            import tifffile
        except ImportError:
            raise DatasetError(f"{path}: reading TIFF files needs tifffile (pip install tifffile)") from None
        try:
            return np.asarray(tifffile.imread(path))
        except Exception as exc:  # tifffile raises many kinds for a file that is not a TIFF
            raise DatasetError(f"{path}: not a readable TIFF file ({exc})") from None
    try:
        with Image.open(path) as im:
            if image and im.mode not in ("L", "RGB", "I", "F", "I;16", "I;16B", "I;16L"):
                return np.asarray(im.convert("RGB"))
            if im.mode in ("P", "1"):
                return np.asarray(im, dtype=np.uint8)
            if im.mode in ("I;16", "I;16B", "I;16L"):
                return np.asarray(im, dtype=np.uint16)
            return np.asarray(im)
    except OSError as exc:
        raise DatasetError(f"{path}: not a readable image ({exc})") from None


def _scale(array: np.ndarray, intensity: str) -> np.ndarray:
    """Pixel values as float32 in [0, 1]: integers over their type's maximum ("dtype"; floats are
    kept), or the image's PERCENTILES mapped to 0 and 1 and clipped ("percentile")."""
    values = array.astype(np.float32)
    if intensity == "percentile":
        low, high = np.percentile(values, PERCENTILES)
        return np.clip((values - np.float32(low)) / np.float32(max(float(high - low), 1e-12)), 0.0, 1.0)
    if np.issubdtype(array.dtype, np.integer):
        return values / float(np.iinfo(array.dtype).max)
    return values


def read_image(path: Path, channels: int = 3, intensity: str = "dtype") -> torch.Tensor:
    """Image as float (channels, H, W) in [0, 1]: grey repeated to RGB, RGB averaged to grey
    (channels = 1), an alpha channel dropped."""
    array = _read_array(path, image=True)
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        array = array[..., :3]
        if channels == 1:
            array = array.mean(-1).astype(array.dtype)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise DatasetError(f"{path}: image of shape {array.shape}; expected H x W (grey) or H x W x 3 (RGB)")
    if array.shape[-1] == 1 and channels != 1:
        array = np.repeat(array, channels, axis=-1)
    if array.shape[-1] != channels:
        raise DatasetError(f"{path}: image has {array.shape[-1]} channels but task.settings.in_channels = {channels}")
    return torch.from_numpy(_scale(array, intensity).copy()).permute(2, 0, 1).contiguous()


def read_mask(path: Path) -> torch.Tensor:
    """Class-id (or object-id) mask as int64 (H, W)."""
    if path.suffix.lower() not in TIFF_SUFFIXES:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16", "1"):
                raise DatasetError(f"{path}: mask has mode {im.mode!r}; it must be single-channel "
                                   "(grey levels or palette indices = class ids), not colour")
    array = _read_array(path, image=False)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
        raise DatasetError(f"{path}: mask of shape {array.shape} and type {array.dtype}; it must be one channel "
                           "of integer class ids")
    return torch.from_numpy(array.astype(np.int64))


def _example(name: str, image_path: Path, mask_path: Path, num_classes: int, ignore_index: int | None,
             channels: int, intensity: str, masks: str) -> Example:
    image = read_image(image_path, channels, intensity)
    mask = read_mask(mask_path)
    if tuple(mask.shape) != tuple(image.shape[1:]):
        raise DatasetError(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                           f"{image.shape[2]}x{image.shape[1]} (width x height)")
    if masks == "instances":
        # Object ids (0 = background) become the one object class; the ids are not classes.
        mask = (mask > 0).long()
    elif masks == "boundaries":
        mask = boundary_classes(mask)
    labelled = mask if ignore_index is None else mask[mask != ignore_index]
    if labelled.numel() and int(labelled.max()) >= num_classes:
        bad = sorted({int(v) for v in labelled.unique() if v >= num_classes})
        hint = "" if ignore_index is not None else " (or set task.settings.ignore_index for void pixels)"
        hint += "; a mask of object ids needs task.settings.masks = 'instances'" if len(bad) > 2 else ""
        raise DatasetError(f"{mask_path}: class ids {bad[:8]}{' ...' if len(bad) > 8 else ''} but num_classes = "
                           f"{num_classes}; ids must lie in [0, {num_classes}){hint}")
    return Example(image=image, mask=mask, scene={"id": name})


def load_pair(image: str | Path, mask: str | Path, num_classes: int, *, ignore_index: int | None = None,
              channels: int = 3, intensity: str = "dtype", masks: str = "classes") -> list[Example]:
    """The one example of an image file and its label mask file."""
    image, mask = Path(image), Path(mask)
    for f in (image, mask):
        if not f.is_file():
            raise DatasetError(f"{f}: file not found")
    for f, suffixes in ((image, IMAGE_SUFFIXES), (mask, MASK_SUFFIXES)):
        if f.suffix.lower() not in suffixes:
            raise DatasetError(f"{f}: not one of {', '.join(suffixes)}")
    return [_example(image.stem, image, mask, num_classes, ignore_index, channels, intensity, masks)]


def load_folder(path: str | Path, num_classes: int, *, ignore_index: int | None = None, channels: int = 3,
                intensity: str = "dtype", masks: str = "classes") -> list[Example]:
    """Examples from ``path/images/NAME.*`` and ``path/masks/NAME.*``, paired by file name."""
    root = Path(path)
    images_dir, masks_dir = root / "images", root / "masks"
    for d in (root, images_dir, masks_dir):
        if not d.is_dir():
            raise DatasetError(f"{d}: folder not found (expected {root}/images/NAME.png and {root}/masks/NAME.png)")
    images = _files(images_dir, IMAGE_SUFFIXES)
    masks_found = _files(masks_dir, MASK_SUFFIXES)
    if not images:
        raise DatasetError(f"{images_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
    no_mask = sorted(set(images) - set(masks_found))
    no_image = sorted(set(masks_found) - set(images))
    if no_mask or no_image:
        parts = []
        if no_mask:
            parts.append(f"images without a mask in {masks_dir}: {', '.join(no_mask[:5])}"
                         + (f" (+{len(no_mask) - 5} more)" if len(no_mask) > 5 else ""))
        if no_image:
            parts.append(f"masks without an image in {images_dir}: {', '.join(no_image[:5])}"
                         + (f" (+{len(no_image) - 5} more)" if len(no_image) > 5 else ""))
        raise DatasetError("; ".join(parts))
    return [_example(name, images[name], masks_found[name], num_classes, ignore_index, channels, intensity, masks)
            for name in sorted(images)]
