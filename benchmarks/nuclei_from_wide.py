"""AutoSimulate started from broad domain randomisation on the real nuclei image: does it end at least
as good as the randomisation it starts from, with raw and with scaled ψ steps?

    python benchmarks/nuclei_from_wide.py --out bench-results/nuclei-from-wide [--seeds 5] [--json FILE]

Writes three configs from examples/nuclei_unet.toml: AutoSimulate (linear) with ``start = "wide"`` and
``step_units = "raw"`` (``from_wide_raw``) or ``"scaled"`` (``from_wide_scaled``), and the `wide`
preset kept fixed (examples/nuclei_unet_wide.toml), and runs ``autosim compare --final-training`` on
them over ``--seeds`` seeds (the same recipe, budgets and real validation and test halves as
benchmarks/nuclei.py). The report holds each method's fresh-model scores on the real test half
(the task's mIoU, object F1 and two-class mIoU, as benchmarks/nuclei.py measures them) and ψ per run.

What would support "AutoSimulate does not end below the randomisation it starts from": each
AutoSimulate row's fresh test mIoU at or above `wide`'s mean, or below it by less than the larger
seed std; refuted by a mean below `wide`'s by more than that std (written before the first run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from nuclei import ROOT, compare, real_files, real_image, scored_runs, spread

METHODS = ["from_wide_raw", "from_wide_scaled", "nuclei_unet_wide"]
LEARNED = 'settings = { scenes_per_iteration = 32, lr = 0.15, step_units = "raw" }'


def write_configs(folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    base = (ROOT / "examples" / "nuclei_unet.toml").read_text()
    assert 'start = "initial"' in base and LEARNED in base, "examples/nuclei_unet.toml changed its start or searcher"
    paths = []
    for units in ("raw", "scaled"):
        text = base.replace('start = "initial"', 'start = "wide"').replace(
            LEARNED, f'settings = {{ scenes_per_iteration = 32, lr = 0.15, step_units = "{units}" }}')
        path = folder / f"from_wide_{units}.toml"
        path.write_text(text)
        paths.append(str(path))
    fixed = folder / "nuclei_unet_wide.toml"
    fixed.write_text((ROOT / "examples" / "nuclei_unet_wide.toml").read_text())
    return [*paths, str(fixed)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-results/nuclei-from-wide"))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="where the report goes (default OUT/from_wide.json)")
    args = parser.parse_args()
    real_files()
    configs = write_configs(args.out / "configs")
    start = time.perf_counter()
    comparison = compare(configs, "nuclei_unet_wide", args.out, args)
    wall = time.perf_counter() - start
    image, instances = real_image()
    runs = scored_runs(args.out, METHODS, args.seeds, image, instances)
    for by_seed in runs.values():
        for r in by_seed.values():
            r.pop("space", None)
    fresh = {e["method"]: {"test": e["fresh_test_metric"], "val": e["fresh_val_metric"]}
             for e in comparison["methods"]}
    report = {"benchmark": "nuclei-from-wide", "seeds": args.seeds, "wall_seconds": wall,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
              "configs": {Path(c).stem: Path(c).read_text() for c in configs}, "fresh": fresh,
              "object_f1": spread(runs, "f1"), "binary_miou": spread(runs, "binary_miou"),
              "comparison": comparison, "runs": runs}
    target = args.json or args.out / "from_wide.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report, indent=2) + "\n")
    for method, scores in fresh.items():
        print(f"{method:18s} fresh test {scores['test']['mean']:.4f} ± {scores['test']['std']:.4f}  "
              f"val {scores['val']['mean']:.4f} ± {scores['val']['std']:.4f}")
    print(f"wrote {target} ({wall / 60:.1f} min)")


if __name__ == "__main__":
    main()
