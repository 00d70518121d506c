"""How large must the fresh model be for the Table 2 problem to rank distributions?

    python benchmarks/fresh_sizing.py --out bench-results/fresh-sizing [--images 384 768] [--seeds 3]
        [--recipe epochs=8 --recipe epochs=8,schedule=cosine ...]

For the presets `initial` (where psi starts) and `target` (the oracle), fresh UNets trained as
``autosim train`` trains them on each number of renders, under each recipe (``[final_training]``
keys over benchmarks/table2.py's: 8 epochs, Adam at 3e-3, constant rate), from ``--seeds`` seeds
each, scored on test. A recipe can rank methods only where the oracle's mean is above the start's
by more than three times the larger std. Writes OUT/fresh-sizing.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reward_rank
import table2


def parse_recipe(text: str) -> dict[str, Any]:
    """``epochs=8,schedule=cosine`` -> {"epochs": 8, "schedule": "cosine"} (numbers read as numbers)."""
    recipe: dict[str, Any] = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        try:
            recipe[key] = json.loads(value)
        except json.JSONDecodeError:
            recipe[key] = value
    return recipe


def label(recipe: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(recipe.items())) or "table2"


def train(task: tuple[str, str, int, int, dict[str, Any]]) -> dict[str, Any]:
    import torch

    from autosim_core.final import FinalTrainer

    torch.set_num_threads(1)
    folder, preset, images, seed, recipe = task
    trainer = FinalTrainer(folder, images=images, final_training={**table2.FINAL, **recipe})
    space = trainer.run.plan.space_for(preset, {}, "simulator")
    start = time.perf_counter()
    _, result = trainer.train(space, seed)
    trainer.close()
    return {"preset": preset, "images": images, "recipe": label(recipe), "seed": seed,
            "test": result["test"]["metric"], "val": result["val"]["metric"],
            "seconds": time.perf_counter() - start}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench-results/fresh-sizing"))
    ap.add_argument("--images", type=int, nargs="+", default=[384, 768])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--recipe", type=parse_recipe, action="append", default=None,
                    help="[final_training] keys over Table 2's, e.g. epochs=12,schedule=cosine (repeatable)")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    folder = reward_rank.base_run(args.out / "base-run")
    recipes = args.recipe or [{}]
    tasks = [(str(folder), preset, images, 10_000 + s, recipe) for recipe in recipes for images in args.images
             for preset in ("initial", "target") for s in range(args.seeds)]
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        results = list(pool.map(train, tasks))
    summary = []
    for recipe, images in ((label(r), i) for r in recipes for i in args.images):
        row: dict[str, Any] = {"recipe": recipe, "images": images}
        for preset in ("initial", "target"):
            values = [r["test"] for r in results
                      if r["images"] == images and r["preset"] == preset and r["recipe"] == recipe]
            std = statistics.stdev(values) if len(values) > 1 else None
            row[preset] = {"mean": statistics.fmean(values), "std": std}
        stds = [row[p]["std"] for p in ("initial", "target") if row[p]["std"] is not None]
        row["gap"] = row["target"]["mean"] - row["initial"]["mean"]
        row["ranks"] = bool(stds) and row["gap"] > 3 * max(stds)
        summary.append(row)
        print(f"{recipe}, {images:>5} images: initial {row['initial']['mean']:.3f} ± {row['initial']['std'] or 0:.3f}, "
              f"target {row['target']['mean']:.3f} ± {row['target']['std'] or 0:.3f}, gap {row['gap']:.3f}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fresh-sizing.json").write_text(json.dumps(
        {"base_recipe": table2.FINAL, "runs": results, "summary": summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
