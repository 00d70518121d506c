"""Detection datasets on disk: COCO JSON, BOP scenes and the folders ``autosim generate`` writes.

Every loader returns ``Example`` s whose ``image`` is float (3, H, W) in [0, 1] and whose
``objects`` are ``{"category": name, "box": [x0, y0, x1, y1], ...}`` with the box in pixels of
that image (corners, continuous coordinates: pixel column i spans [i, i + 1]), plus
``"visible_fraction"`` where the format records it. ``scene["id"]`` names the image.

Layouts (``load_detection_folder`` tells them apart in this order):

* ``autosim generate``: ``DIR/annotations.jsonl`` + ``DIR/images/`` (``autosim_core.export``).
* BOP (https://bop.felk.cvut.cz, "BOP-scenewise"): a split folder such as ``lmo/test`` whose
  scene folders ``000002/`` hold ``scene_gt.json``, ``scene_gt_info.json`` (the boxes) and
  ``rgb/`` (or ``gray/``) images, or one scene folder itself.
* COCO: a JSON file with ``images``, ``annotations`` and ``categories`` (see ``find_coco_json``
  for where it is looked for, and ``load_coco`` for where the images are).

``max_size`` (all loaders) shrinks images whose longer side exceeds it, boxes with them:
images are held as float32, 3.7 MB for one 640 x 480 image, while the detectors letterbox
to a far smaller input anyway.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from autosim_core.export import DatasetWriter
from autosim_core.records import Example
from PIL import Image

from .targets import clip_box

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
BOP_TARGETS_FILE = "test_targets_bop19.json"
GENERATED_INDEX = "annotations.jsonl"


class DatasetError(ValueError):
    """A dataset that cannot be read; the message names the file and what was expected."""


# -- images -------------------------------------------------------------------------------------

def read_image(path: Path, max_size: int | None = None) -> tuple[torch.Tensor, tuple[float, float]]:
    """RGB image as float (3, H, W) in [0, 1] and the (x, y) factors it was scaled by."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            sx = sy = 1.0
            if max_size is not None and max(w, h) > max_size:
                factor = max_size / max(w, h)
                nw, nh = max(1, round(w * factor)), max(1, round(h * factor))
                im = im.resize((nw, nh), Image.Resampling.BILINEAR)
                sx, sy = nw / w, nh / h
            array = np.asarray(im, dtype=np.uint8)
    except OSError as err:
        raise DatasetError(f"{path}: cannot read the image ({err})") from err
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0), (sx, sy)


def _scaled(box: Sequence[float], factors: tuple[float, float]) -> list[float]:
    sx, sy = factors
    return [float(box[0]) * sx, float(box[1]) * sy, float(box[2]) * sx, float(box[3]) * sy]


def _scene(scene: dict[str, Any], factors: tuple[float, float]) -> dict[str, Any]:
    # Recorded so a box can be mapped back to the file's own pixels.
    if factors != (1.0, 1.0):
        scene["scale"] = [factors[0], factors[1]]
    return scene


def _read_json(path: Path) -> Any:
    try:
        with path.open() as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}: not valid JSON ({err})") from err
    except OSError as err:
        raise DatasetError(f"{path}: cannot read it ({err})") from err


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise ValueError(f"limit = {limit} must be at least 1 (or None for all images)")


def _xywh_to_xyxy(box: Any, where: str) -> list[float]:
    if not isinstance(box, list | tuple) or len(box) != 4:
        raise DatasetError(f"{where}: bbox {box!r} is not [x, y, width, height]")
    x, y, w, h = (float(v) for v in box)
    return [x, y, x + w, y + h]


def _inside_image(objects: list[tuple[str, dict[str, Any]]], image: torch.Tensor) -> tuple[list[dict[str, Any]], int]:
    """``(where, object)`` pairs -> the objects with their boxes clipped to ``image`` (C, H, W)
    and how many were clipped. A clipped object keeps its box as read in ``"clipped_from"``;
    a box with no area inside the image is a ``DatasetError`` naming ``where`` (``clip_box``)."""
    height, width = image.shape[1], image.shape[2]
    kept, clipped = [], 0
    for where, obj in objects:
        try:
            box, moved = clip_box(obj["box"], width, height, where)
        except ValueError as err:
            raise DatasetError(str(err)) from None
        if moved:
            obj = {**obj, "box": box, "clipped_from": [float(v) for v in obj["box"]]}
            clipped += 1
        kept.append(obj)
    return kept, clipped


def _report_clipped(source: Path, clipped: int) -> None:
    if clipped:
        logging.getLogger("autosim").warning("%s: %d box(es) reach outside their image; clipped to it (each keeps "
                                             "the box as read in 'clipped_from')", source, clipped)


# -- COCO ---------------------------------------------------------------------------------------

def _coco_json_in(folder: Path) -> Path | None:
    steps = [
        [folder / "annotations.json"],
        sorted(folder.glob("instances*.json")),
        sorted((folder / "annotations").glob("*.json")),
        sorted(folder.glob("*.json")),
    ]
    for step in steps:
        found = [f for f in step if f.is_file()]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            names = ", ".join(str(f.relative_to(folder)) for f in found[:6]) + (" ..." if len(found) > 6 else "")
            raise DatasetError(f"{folder}: several COCO JSON candidates ({names}); pass the one to load as the path")
    return None


def find_coco_json(path: str | Path) -> Path:
    """The COCO annotation file of ``path``, looked for in this order:

    1. ``path`` itself when it is a ``.json`` file;
    2. ``path/annotations.json``;
    3. ``path/instances*.json`` (COCO's own naming, e.g. ``instances_val2017.json``);
    4. ``path/annotations/*.json`` (COCO's release layout);
    5. any other ``path/*.json`` (e.g. Roboflow's ``_annotations.coco.json``).

    A step that finds one file wins; one that finds several raises, naming them, since
    guessing between e.g. train and val annotations would silently load the wrong split.
    """
    p = Path(path)
    if p.is_file():
        if p.suffix.lower() != ".json":
            raise DatasetError(f"{p}: expected a COCO .json file or a folder holding one")
        return p
    if not p.is_dir():
        raise DatasetError(f"{p}: no such file or folder")
    found = _coco_json_in(p)
    if found is None:
        raise DatasetError(f"{p}: no COCO JSON found (looked for annotations.json, instances*.json, "
                           "annotations/*.json, *.json)")
    return found


def _coco_image_dirs(json_path: Path, root: Path) -> list[Path]:
    dirs = [json_path.parent, json_path.parent / "images", root, root / "images"]
    # COCO's release: annotations/instances_val2017.json describes the images in val2017/.
    stem = json_path.stem
    if stem.startswith("instances_"):
        dirs.append(root / stem[len("instances_"):])
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def load_coco(path: str | Path, *, image_root: str | Path | None = None, limit: int | None = None,
              max_size: int | None = None) -> list[Example]:
    """Examples from a COCO detection JSON (found as ``find_coco_json`` describes).

    Each image's ``file_name`` is looked up relative to ``image_root`` when given, else, first
    match wins: the JSON's folder, its ``images/``, the dataset folder, its ``images/`` and,
    for ``annotations/instances_NAME.json``, the folder ``NAME/`` beside ``annotations/``.
    The dataset folder is ``path`` when it is a folder, else the JSON's folder, or its parent
    when that is called ``annotations``.

    Boxes: COCO's ``[x, y, width, height]`` become ``[x0, y0, x1, y1]``; category names come
    from ``categories``. ``iscrowd`` annotations (a region of many objects, which COCO's own
    evaluation ignores) are left out. Images without annotations are kept with no objects.
    A ``visible_fraction`` key on an annotation (``write_coco`` writes one) is kept.
    Images are ordered by ``file_name``; ``limit`` keeps the first N. ``scene["id"]`` is the
    ``file_name``, ``scene["image_id"]`` the COCO image id.
    """
    _check_limit(limit)
    json_path = find_coco_json(path)
    p = Path(path)
    if p.is_dir():
        root = p
    else:
        root = json_path.parent.parent if json_path.parent.name == "annotations" else json_path.parent
    data = _read_json(json_path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(f"{json_path}: not a COCO detection file (no 'images' list)")
    for key in ("annotations", "categories"):
        if not isinstance(data.get(key, []), list):
            raise DatasetError(f"{json_path}: '{key}' must be a list")

    names: dict[Any, str] = {}
    for cat in data.get("categories", []):
        if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
            raise DatasetError(f"{json_path}: category {cat!r} needs an 'id' and a 'name'")
        if str(cat["name"]) in names.values():
            raise DatasetError(f"{json_path}: two categories are named {cat['name']!r}; objects are told apart "
                               "by name, so names must be distinct")
        names[cat["id"]] = str(cat["name"])

    images: dict[Any, dict[str, Any]] = {}
    for img in data["images"]:
        if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
            raise DatasetError(f"{json_path}: image entry {img!r} needs an 'id' and a 'file_name'")
        if img["id"] in images:
            raise DatasetError(f"{json_path}: image id {img['id']!r} appears twice")
        images[img["id"]] = img

    per_image: dict[Any, list[tuple[str, dict[str, Any]]]] = {i: [] for i in images}
    for ann in data.get("annotations", []):
        where = f"{json_path}: annotation {ann.get('id', '?')!r}" if isinstance(ann, dict) else f"{json_path}"
        if not isinstance(ann, dict) or "image_id" not in ann or "bbox" not in ann or "category_id" not in ann:
            raise DatasetError(f"{where}: needs 'image_id', 'category_id' and 'bbox'")
        if ann.get("iscrowd", 0):
            continue
        if ann["image_id"] not in per_image:
            raise DatasetError(f"{where}: image_id {ann['image_id']!r} is not in 'images'")
        if ann["category_id"] not in names:
            raise DatasetError(f"{where}: category_id {ann['category_id']!r} is not in 'categories'")
        obj: dict[str, Any] = {"category": names[ann["category_id"]], "box": _xywh_to_xyxy(ann["bbox"], where)}
        if "visible_fraction" in ann:
            obj["visible_fraction"] = float(ann["visible_fraction"])
        per_image[ann["image_id"]].append((where, obj))

    dirs = [Path(image_root)] if image_root is not None else _coco_image_dirs(json_path, root)
    chosen = sorted(images.values(), key=lambda img: str(img["file_name"]))
    if limit is not None:
        chosen = chosen[:limit]
    examples, clipped = [], 0
    for img in chosen:
        name = str(img["file_name"])
        file = next((d / name for d in dirs if (d / name).is_file()), None)
        if file is None:
            tried = ", ".join(str(d) for d in dirs)
            raise DatasetError(f"{json_path}: image {name!r} not found in {tried}"
                               + ("" if image_root is not None else " (pass image_root)"))
        image, factors = read_image(file, max_size)
        declared = (img.get("width"), img.get("height"))
        actual = (round(image.shape[2] / factors[0]), round(image.shape[1] / factors[1]))
        if None not in declared and tuple(int(v) for v in declared) != actual:
            raise DatasetError(f"{file}: image is {actual[0]}x{actual[1]} but {json_path.name} says "
                               f"{declared[0]}x{declared[1]} (width x height)")
        objects, count = _inside_image([(where, {**obj, "box": _scaled(obj["box"], factors)})
                                        for where, obj in per_image[img["id"]]], image)
        clipped += count
        examples.append(Example(image=image, objects=objects,
                                scene=_scene({"id": name, "image_id": img["id"]}, factors)))
    _report_clipped(json_path, clipped)
    return examples


def write_coco(examples: Iterable[Example], out_dir: str | Path, classes: Sequence[str]) -> Path:
    """Examples as a COCO detection dataset: ``out_dir/images/000000.png``, ... and
    ``out_dir/annotations.json`` (whose ``file_name`` s are relative to ``images/``), so
    renders can be fed to other trainers. Returns the JSON's path; both are overwritten.

    Category ids are 1, 2, ... in the order of ``classes`` (0 is background to several
    trainers); image and annotation ids start at 1 as well. ``area`` is the box's area, as
    there are no masks. An object's ``visible_fraction`` is kept as an extra annotation key,
    which COCO tools ignore. Boxes are clipped to the image; objects with an empty box (zero width
    or height) are left out:
    they are not valid COCO and every detector drops them anyway. The files are those of
    ``autosim generate --format coco`` (the core's ``DatasetWriter``).
    """
    writer = DatasetWriter(out_dir, "coco", classes)
    writer.write(list(examples))
    writer.close()
    return Path(out_dir) / "annotations.json"


# -- BOP ----------------------------------------------------------------------------------------

def _bop_scenes(root: Path) -> list[Path]:
    if (root / "scene_gt.json").is_file():
        return [root]
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder")
    scenes = sorted(d for d in root.iterdir() if d.is_dir() and (d / "scene_gt.json").is_file())
    if not scenes:
        raise DatasetError(f"{root}: no BOP scene folders (expected SCENE/scene_gt.json, e.g. {root}/000002/)")
    return scenes


def _bop_targets(split: Path, test_targets: bool | str | Path | None) -> set[tuple[int, int]] | None:
    if test_targets is False:
        return None
    if test_targets is None or test_targets is True:
        file = split.parent / BOP_TARGETS_FILE
        if test_targets is None and not (file.is_file() and split.name.startswith("test")):
            return None
        if not file.is_file():
            raise DatasetError(f"{file}: not found (test_targets=True wants BOP's target list at the dataset root)")
    else:
        file = Path(test_targets)
    rows = _read_json(file)
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "scene_id" in r and "im_id" in r for r in rows):
        raise DatasetError(f"{file}: expected a list of {{'scene_id', 'im_id', 'obj_id', 'inst_count'}} rows")
    return {(int(r["scene_id"]), int(r["im_id"])) for r in rows}


def _bop_image(scene: Path, im_id: int) -> Path:
    for folder in ("rgb", "gray"):
        for suffix in IMAGE_SUFFIXES:
            file = scene / folder / f"{im_id:06d}{suffix}"
            if file.is_file():
                return file
    raise DatasetError(f"{scene}: image {im_id:06d} not found in rgb/ or gray/")


def load_bop(path: str | Path, *, names: Mapping[int | str, str] | None = None,
             test_targets: bool | str | Path | None = None, limit: int | None = None,
             max_size: int | None = None) -> list[Example]:
    """Examples from a BOP split folder (e.g. ``lmo/test``, scene folders ``000002/`` ...) or
    from one scene folder.

    Per scene it reads ``scene_gt.json`` (which objects, by ``obj_id``), ``scene_gt_info.json``
    (their boxes; same order as ``scene_gt.json``), images ``rgb/NNNNNN.png`` (or ``.jpg``, or
    ``gray/``) and, when present, ``scene_camera.json`` (``cam_K`` goes into ``scene``).
    The box is ``bbox_visib``, the box of the visible part, as BOP's 2D detection tasks score
    it; objects with no visible pixel (``bbox_visib`` of -1s) are left out, and
    ``visib_fract`` becomes ``"visible_fraction"`` (the task drops objects below its
    ``min_visible_fraction``). The category is ``names[obj_id]`` when given (keys may be
    ints or strings, as TOML writes them), else ``obj_NNNNNN``, the name of BOP's model file;
    ids missing from ``names`` keep that default. Each object also carries its ``obj_id``.

    ``test_targets``: BOP evaluates test splits on the images listed in
    ``test_targets_bop19.json`` at the dataset root (the split's parent; 200 of LM-O's 1214
    test images). None (default) keeps only those images when that file exists and the split's
    name starts with "test"; True requires it; False keeps every image; a path names the list.

    Images are ordered by (scene, image id); ``limit`` keeps the first N. ``scene["id"]`` is
    ``"SCENE/IMAGE"`` (e.g. ``"000002/000003"``), with the ids also as ``bop_scene_id`` and
    ``bop_im_id``.
    """
    _check_limit(limit)
    root = Path(path)
    scenes = _bop_scenes(root)
    split = root.parent if scenes == [root] else root
    wanted = _bop_targets(split, test_targets)
    try:
        lookup = {int(k): str(v) for k, v in (names or {}).items()}
    except (TypeError, ValueError):
        raise ValueError(f"names must map BOP obj_ids (integers) to class names, got {dict(names or {})!r}") from None

    chosen: list[tuple[int, int, Path, dict[str, Any]]] = []
    for scene in scenes:
        if not scene.name.isdigit():
            raise DatasetError(f"{scene}: BOP scene folders are named by their id (e.g. 000002)")
        scene_id = int(scene.name)
        gt = _read_json(scene / "scene_gt.json")
        info_file = scene / "scene_gt_info.json"
        if not info_file.is_file():
            raise DatasetError(f"{info_file}: not found; the 2D boxes come from it (bop_toolkit's "
                               "scripts/calc_gt_info.py writes it)")
        info = _read_json(info_file)
        camera_file = scene / "scene_camera.json"
        camera = _read_json(camera_file) if camera_file.is_file() else {}
        if not isinstance(gt, dict) or not isinstance(info, dict):
            raise DatasetError(f"{scene}: scene_gt.json and scene_gt_info.json must map image ids to lists")
        for key in sorted(gt, key=int):
            im_id = int(key)
            if wanted is not None and (scene_id, im_id) not in wanted:
                continue
            chosen.append((scene_id, im_id, scene, {"gt": gt[key], "info": info.get(key),
                                                     "camera": camera.get(key, {})}))
    if not chosen and wanted is None:
        raise DatasetError(f"{root}: its scene_gt.json files list no images")
    if not chosen:
        raise DatasetError(f"{root}: none of its images is in the BOP target list ({BOP_TARGETS_FILE}); pass "
                           "test_targets=False to load them all")
    if limit is not None:
        chosen = chosen[:limit]

    examples, clipped = [], 0
    for scene_id, im_id, scene, record in chosen:
        where = f"{scene}/scene_gt_info.json: image {im_id}"
        if not isinstance(record["info"], list) or len(record["info"]) != len(record["gt"]):
            raise DatasetError(f"{where}: needs one entry per object of scene_gt.json ({len(record['gt'])})")
        image, factors = read_image(_bop_image(scene, im_id), max_size)
        objects = []
        for obj_gt, obj_info in zip(record["gt"], record["info"], strict=True):
            bbox = obj_info.get("bbox_visib")
            if bbox is None:
                raise DatasetError(f"{where}: an object has no 'bbox_visib'")
            if min(bbox) < 0 or bbox[2] <= 0 or bbox[3] <= 0:
                continue
            if "obj_id" not in obj_gt:
                raise DatasetError(f"{scene}/scene_gt.json: image {im_id}: an object has no 'obj_id'")
            obj_id = int(obj_gt["obj_id"])
            obj: dict[str, Any] = {"category": lookup.get(obj_id, f"obj_{obj_id:06d}"),
                                   "box": _scaled(_xywh_to_xyxy(bbox, where), factors), "obj_id": obj_id}
            if "visib_fract" in obj_info:
                obj["visible_fraction"] = float(obj_info["visib_fract"])
            objects.append((f"{where}: object {obj_id}", obj))
        objects, count = _inside_image(objects, image)
        clipped += count
        scene_record: dict[str, Any] = {"id": f"{scene_id:06d}/{im_id:06d}", "bop_scene_id": scene_id,
                                        "bop_im_id": im_id}
        if "cam_K" in record["camera"]:
            scene_record["cam_K"] = [float(v) for v in record["camera"]["cam_K"]]
        examples.append(Example(image=image, objects=objects, scene=_scene(scene_record, factors)))
    _report_clipped(root, clipped)
    return examples


# -- autosim generate -----------------------------------------------------------------------------

def load_generated(path: str | Path, *, limit: int | None = None, max_size: int | None = None) -> list[Example]:
    """Examples from a folder ``autosim generate`` wrote: ``annotations.jsonl`` (one JSON object
    per image: ``image`` path relative to the folder, ``objects``, ``scene``, ``label``) and
    ``images/``. Objects are kept with all their keys; ``scene`` gets an ``id`` (the image's
    file name) when it has none. ``limit`` keeps the first N lines.
    """
    _check_limit(limit)
    root = Path(path)
    index = root / GENERATED_INDEX
    if not index.is_file():
        raise DatasetError(f"{index}: not found (expected the folder autosim generate writes)")
    examples, clipped = [], 0
    with index.open() as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            if limit is not None and len(examples) >= limit:
                break
            where = f"{index}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DatasetError(f"{where}: not valid JSON ({err})") from err
            if not isinstance(row, dict) or not isinstance(row.get("image"), str):
                raise DatasetError(f"{where}: needs an 'image' path")
            file = root / row["image"]
            if not file.is_file():
                raise DatasetError(f"{where}: image {file} not found")
            image, factors = read_image(file, max_size)
            objects = []
            for obj in row.get("objects") or []:
                box = obj.get("box") if isinstance(obj, dict) else None
                if box is None or len(box) != 4 or "category" not in obj:
                    raise DatasetError(f"{where}: object {obj!r} needs a 'category' and a 'box' [x0, y0, x1, y1]")
                objects.append((f"{where}: object {obj['category']!r}", {**obj, "box": _scaled(box, factors)}))
            objects, count = _inside_image(objects, image)
            clipped += count
            scene = dict(row.get("scene") or {})
            scene.setdefault("id", Path(row["image"]).name)
            examples.append(Example(image=image, objects=objects, label=row.get("label"),
                                    scene=_scene(scene, factors)))
    if not examples:
        raise DatasetError(f"{index}: no examples")
    _report_clipped(index, clipped)
    return examples


# -- dispatch -----------------------------------------------------------------------------------

def load_detection_folder(path: str | Path, *, limit: int | None = None, max_size: int | None = None,
                          names: Mapping[int | str, str] | None = None,
                          test_targets: bool | str | Path | None = None) -> list[Example]:
    """Examples from ``path`` in whichever layout it holds, checked in this order:

    1. a ``.json`` file: COCO (``load_coco``);
    2. ``annotations.jsonl``: what ``autosim generate`` writes (``load_generated``);
    3. ``scene_gt.json`` in ``path`` or in its subfolders: BOP (``load_bop``; ``names`` and
       ``test_targets`` apply to it only);
    4. a COCO JSON as ``find_coco_json`` looks for it (``load_coco``).
    """
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"{p}: no such file or folder")
    if p.is_file():
        return load_coco(p, limit=limit, max_size=max_size)
    if (p / GENERATED_INDEX).is_file():
        return load_generated(p, limit=limit, max_size=max_size)
    if (p / "scene_gt.json").is_file() or any(p.glob("*/scene_gt.json")):
        return load_bop(p, names=names, test_targets=test_targets, limit=limit, max_size=max_size)
    splits = sorted({f.parent.parent.name for f in p.glob("*/*/scene_gt.json")})
    if splits:
        raise DatasetError(f"{p}: looks like a BOP dataset root; pass one split folder, e.g. "
                           + " or ".join(str(p / s) for s in splits))
    if _coco_json_in(p) is None:
        raise DatasetError(f"{p}: no detection dataset found; expected a COCO JSON (annotations.json, "
                           f"instances*.json, annotations/*.json), a BOP split (SCENE/scene_gt.json) or an autosim "
                           f"generate folder ({GENERATED_INDEX} + images/)")
    return load_coco(p, limit=limit, max_size=max_size)
