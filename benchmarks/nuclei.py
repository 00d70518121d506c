"""Sim-to-real on a real image: the `nuclei` simulator learned against real fluorescence microscopy.

    python benchmarks/nuclei.py --out bench-results/nuclei [--seeds 5] [--workers 2] [--json FILE] [--sheet PNG]

Copies examples/nuclei_unet.toml (AutoSimulate, linear), _initial, _wide and _random to OUT/configs
and runs ``autosim compare`` on them over ``--seeds`` seeds with ``--final-training --resume
--executor processes --workers W``
into OUT (a finished run or fresh model is kept, an interrupted one resumed). The comparison adds
the fresh models trained on the 32 real validation tiles (``trained-on-validation``). A second
comparison in OUT/boundary does the same for the three-class examples (_boundary: AutoSimulate,
_boundary_initial: the fixed start), whose renders and real masks label the nuclei's outlines.
Then, from the runs they left, this script writes OUT/nuclei.json (or ``--json``):

- the comparisons (headline: each method's fresh-model mIoU on the real test tiles);
- for every fresh model (``final/model.pt``), on the real test half with its tiles' predictions
  stitched back together: the per-object F1 at IoU 0.5 (the connected components of predicted
  nucleus pixels, or with a boundary class those of the predicted interiors grown back by two
  pixels into the predicted outlines, matched against the real instance mask; a match is
  IoU > 0.5, which makes it one to one) and the two-class mIoU (nucleus against background), which
  scores two- and three-class models alike;
- what the real validation half measures (nuclei per tile, radius, elongation, brightness above
  background and its spread, background, its noise) and the same statistics of 64 renders of
  each method's ψ (initial, learned, wide), measured the same way from the renders' instance masks;
- ψ in readable units: where each run started and what it handed over.

and a contact sheet (``--sheet``): real validation tiles beside renders from `initial`, from
AutoSimulate's learned ψ (seed 0) and from `wide`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["nuclei_unet", "nuclei_unet_initial", "nuclei_unet_wide", "nuclei_unet_random"]
BOUNDARY_METHODS = ["nuclei_unet_boundary", "nuclei_unet_boundary_initial"]
LABELS = {"nuclei_unet": "learned (AutoSim.)", "nuclei_unet_initial": "initial", "nuclei_unet_wide": "wide",
          "nuclei_unet_random": "random search"}
GROW = 2
"""Pixels by which a predicted interior grows back into the predicted outline (the outline is one pixel
of each nucleus; two let a component reach across a blurred prediction)."""
REFERENCE = "trained-on-validation"
TILE = 64
SMOKE = [("iterations = 5", "iterations = 1"), ("iterations = 2", "iterations = 1"), ("images = 128", "images = 16"),
         ("scenes_per_evaluation = 80", "scenes_per_evaluation = 8")]


def real_files() -> tuple[Path, Path]:
    spec = importlib.util.find_spec("stardist")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("error: the real image ships inside stardist: pip install --no-deps stardist tifffile")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data" / "images"
    return folder / "img2d.tif", folder / "mask2d.tif"


def real_image() -> tuple[np.ndarray, np.ndarray]:
    """The image normalised as the examples' task settings read it, and its instance mask."""
    from autosim_unet.data import load_pair, read_mask

    image_path, mask_path = real_files()
    [example] = load_pair(image_path, mask_path, 2, channels=1, intensity="percentile", masks="instances")
    return example.image[0].numpy(), read_mask(mask_path).numpy()


def statistics(images: list[np.ndarray], instances: list[np.ndarray]) -> dict[str, float]:
    """Per-tile statistics of images (H, W) and their instance masks, in the simulator's units."""
    counts, radii, ratios, levels, backgrounds, noise = [], [], [], [], [], []
    for image, inst in zip(images, instances, strict=True):
        ids = [i for i in np.unique(inst) if i != 0]
        counts.append(len(ids))
        bg = image[inst == 0]
        background = float(np.median(bg)) if bg.size else float("nan")
        if bg.size > 50:
            backgrounds.append(background)
            noise.append(float(bg.std()))
        for i in ids:
            ys, xs = np.nonzero(inst == i)
            if len(ys) >= 20:
                radii.append(float(np.sqrt(len(ys) / np.pi)))
                cov = np.cov(np.stack([xs, ys]).astype(float))
                low, high = np.linalg.eigvalsh(cov)
                ratios.append(float(np.sqrt(high / max(low, 1e-6))))
            if bg.size:
                levels.append(float(image[inst == i].mean()) - background)
    positive = np.array([v for v in levels if v > 0])
    return {"nuclei_per_tile": float(np.mean(counts)), "radius_px_median": float(np.median(radii)),
            "elongation_median": float(np.median(ratios)), "brightness_above_background": float(np.mean(levels)),
            "brightness_log_std": float(np.log(positive).std()) if positive.size > 1 else float("nan"),
            "background_median": float(np.median(backgrounds)), "background_std": float(np.mean(noise))}


def tiles_of(array: np.ndarray, x0: int, x1: int) -> list[np.ndarray]:
    return [array[y:y + TILE, x:x + TILE] for y in range(0, array.shape[0] - TILE + 1, TILE)
            for x in range(x0, x1 - TILE + 1, TILE)]


def renders(space_dict: dict[str, Any], count: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    from autosim_nuclei.params import NucleiSettings
    from autosim_nuclei.render import draw_tile

    from autosim_core.space import ParameterSpace

    space = ParameterSpace.from_dict(space_dict)
    records = space.records(space.sample(space.init_psi(), count, torch.Generator().manual_seed(seed)))
    tiles = [draw_tile({**r, "seed": seed * 100_000 + i}, NucleiSettings()) for i, r in enumerate(records)]
    return [t.image.numpy() for t in tiles], [t.instances.numpy() for t in tiles]


def object_f1(predicted: np.ndarray, instances: np.ndarray) -> dict[str, float]:
    """Per-object F1 at IoU 0.5: predicted objects (ids, 0 none) against the real instances."""
    n_pred = int(predicted.max())
    gt_ids, gt = np.unique(instances, return_inverse=True)
    gt = gt.reshape(instances.shape)
    n_gt = len(gt_ids) - (1 if gt_ids[0] == 0 else 0)
    joint = np.bincount(gt.ravel() * (n_pred + 1) + predicted.ravel(),
                        minlength=len(gt_ids) * (n_pred + 1)).reshape(len(gt_ids), n_pred + 1)
    area_gt, area_pred = joint.sum(1), joint.sum(0)
    start = 1 if gt_ids[0] == 0 else 0
    inter = joint[start:, 1:].astype(float)
    union = area_gt[start:, None] + area_pred[None, 1:] - inter
    tp = int((inter / np.maximum(union, 1) > 0.5).sum())
    return {"f1": 2 * tp / max(n_gt + n_pred, 1), "matched": tp, "real_nuclei": int(n_gt), "predicted": int(n_pred)}


def predicted_objects(classes: np.ndarray) -> np.ndarray:
    """Object ids of a predicted class map: the components of class 1, or with a boundary class (2) the
    components of the interiors grown by GROW pixels into the predicted outlines."""
    objects = ndimage.label(classes == 1)[0]
    for _ in range(GROW if (classes == 2).any() else 0):
        grown = ndimage.grey_dilation(objects, footprint=ndimage.generate_binary_structure(2, 1))
        take = (objects == 0) & (classes == 2) & (grown > 0)
        objects[take] = grown[take]
    return objects


def fresh_scores(model_path: Path, config: dict[str, Any], image: np.ndarray,
                 instances: np.ndarray) -> dict[str, float]:
    from autosim_unet.plugin import UNetSettings, build_model

    model = build_model(UNetSettings.model_validate(config["task"]["settings"]))
    model.load_state_dict(torch.load(model_path, weights_only=True))
    model.eval()
    half = image[:, 256:]
    tiles = torch.from_numpy(np.stack(tiles_of(half, 0, 256)))[:, None].float()
    with torch.no_grad():
        predicted = model(tiles).argmax(1).numpy()
    stitched = predicted.reshape(8, 4, TILE, TILE).transpose(0, 2, 1, 3).reshape(512, 256)
    real = instances[:, 256:] > 0
    foreground = stitched > 0
    ious = [float((a & b).sum() / max((a | b).sum(), 1)) for a, b in ((foreground, real), (~foreground, ~real))]
    return {**object_f1(predicted_objects(stitched), instances[:, 256:]), "binary_miou": float(np.mean(ious))}


def contact_sheet(rows: dict[str, list[np.ndarray]], path: Path, scale: int = 2) -> None:
    from PIL import Image, ImageDraw

    label_w, pad, n = 150, 4, max(len(r) for r in rows.values())
    side = TILE * scale
    sheet = Image.new("L", (label_w + n * (side + pad), len(rows) * (side + pad)), 255)
    draw = ImageDraw.Draw(sheet)
    for r, (label, tiles) in enumerate(rows.items()):
        y = r * (side + pad)
        draw.text((6, y + side // 2 - 12), label, fill=0)
        for c, tile in enumerate(tiles):
            im = Image.fromarray((np.clip(tile, 0, 1) * 255).astype(np.uint8)).resize((side, side), Image.NEAREST)
            sheet.paste(im, (label_w + c * (side + pad), y))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def write_configs(methods: list[str], folder: Path, smoke: bool) -> list[str]:
    configs = []
    for method in methods:
        text = (ROOT / "examples" / f"{method}.toml").read_text()
        if smoke:
            for old, new in SMOKE:
                text = text.replace(old, new)
        path = folder / f"{method}.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        configs.append(str(path))
    return configs


def compare(configs: list[str], initial: str, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "autosim_core.cli", "compare", *configs, "--seeds", str(args.seeds),
                    "--final-training", "--resume", "--executor", "processes", "--workers", str(args.workers),
                    "--initial", initial, "--out", str(out)], check=True, env=env)
    return json.loads((out / "comparison.json").read_text())


def scored_runs(out: Path, methods: list[str], seeds: int, image: np.ndarray,
                instances: np.ndarray) -> dict[str, dict[str, Any]]:
    """Per method and seed: where ψ started, what the run handed over, and its fresh model's scores on
    the stitched real test half (the validation-trained reference: its scores only)."""
    runs: dict[str, dict[str, Any]] = {}
    for method in [*methods, REFERENCE]:
        runs[method] = {}
        for i in range(seeds):
            folder = out / method / f"seed-{i}"
            if method == REFERENCE:
                config = json.loads((out / methods[0] / "seed-0" / "config.json").read_text())
                runs[method][str(i)] = {"scores": fresh_scores(folder / "model.pt", config, image, instances)}
                continue
            config = json.loads((folder / "config.json").read_text())
            summary = json.loads((folder / "summary.json").read_text())
            psi = json.loads((folder / "psi.json").read_text())
            runs[method][str(i)] = {"psi_start": summary["psi_start"], "psi": psi["psi"], "space": psi["space"],
                                    "scores": fresh_scores(folder / "final" / "model.pt", config, image, instances)}
    return runs


def spread(runs: dict[str, dict[str, Any]], key: str) -> dict[str, dict[str, float]]:
    out = {}
    for method, by_seed in runs.items():
        values = [r["scores"][key] for r in by_seed.values()]
        out[method] = {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                       "n": len(values)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-results/nuclei"))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="where the report goes (default OUT/nuclei.json)")
    parser.add_argument("--sheet", type=Path, default=None, help="contact sheet PNG (default OUT/contact_sheet.png)")
    parser.add_argument("--no-boundary", action="store_true", help="leave out the three-class comparison")
    parser.add_argument("--smoke", action="store_true", help="one iteration per run and 16-image fresh models: "
                        "proves the whole path in a few minutes (its numbers mean nothing)")
    args = parser.parse_args()
    real_files()
    configs = write_configs(METHODS, args.out / "configs", args.smoke)
    boundary_configs = [] if args.no_boundary else write_configs(BOUNDARY_METHODS, args.out / "configs", args.smoke)
    start = time.perf_counter()
    comparison = compare(configs, "nuclei_unet_initial", args.out, args)
    wall = {"two_class": time.perf_counter() - start}
    boundary_comparison = None
    if boundary_configs:
        start = time.perf_counter()
        boundary_comparison = compare(boundary_configs, "nuclei_unet_boundary_initial", args.out / "boundary", args)
        wall["boundary"] = time.perf_counter() - start

    image, instances = real_image()
    measured = {"validation_half": statistics(tiles_of(image, 0, 256), tiles_of(instances, 0, 256)),
                "test_half": statistics(tiles_of(image, 256, 512), tiles_of(instances, 256, 512))}
    runs = scored_runs(args.out, METHODS, args.seeds, image, instances)
    boundary_runs = (scored_runs(args.out / "boundary", BOUNDARY_METHODS, args.seeds, image, instances)
                     if boundary_configs else {})
    rendered: dict[str, dict[str, float]] = {}
    sheet_rows: dict[str, list[np.ndarray]] = {"real (validation)": tiles_of(image, 0, 256)[:8]}
    for method in METHODS:
        images, inst = renders(runs[method]["0"]["space"], 64, seed=7)
        rendered[method] = statistics(images, inst)
        sheet_rows[LABELS[method]] = images[:8]
    order = ["real (validation)", "initial", "learned (AutoSim.)", "wide", "random search"]
    contact_sheet({k: sheet_rows[k] for k in order if k in sheet_rows}, args.sheet or args.out / "contact_sheet.png")
    for by_seed in [*runs.values(), *boundary_runs.values()]:
        for r in by_seed.values():
            r.pop("space", None)
    report = {"benchmark": "nuclei", "seeds": args.seeds, "workers": args.workers, "wall_seconds": wall,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
              "smoke": args.smoke,
              "configs": {Path(c).stem: Path(c).read_text() for c in [*configs, *boundary_configs]},
              "comparison": comparison, "boundary_comparison": boundary_comparison,
              "object_f1": spread(runs, "f1") | {f"{m} (boundary)": v for m, v in spread(boundary_runs, "f1").items()},
              "binary_miou": spread(runs, "binary_miou")
              | {f"{m} (boundary)": v for m, v in spread(boundary_runs, "binary_miou").items()},
              "grow_px": GROW, "measured_real": measured, "measured_renders_seed0": rendered,
              "runs": runs, "boundary_runs": boundary_runs}
    target = args.json or args.out / "nuclei.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {target} ({sum(wall.values()) / 60:.1f} min)")


if __name__ == "__main__":
    main()
