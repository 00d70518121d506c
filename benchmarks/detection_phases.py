"""Where an AutoSimulate iteration's time goes on the shapes detection demo, per setting of the
hypergradient: the fine-tune against the hypergradient phase, in a real run.

    python benchmarks/detection_phases.py --out bench-results/detection-phases [--iterations 12]

Runs examples/shapes_yolo.toml (YOLOv3-tiny x0.25, 128 px, K = 32, 4 fine-tune epochs, the linear
estimator) for ``--iterations`` iterations once per variant of ``[searcher.settings]`` in
``VARIANTS``, one after another on one thread, and reports each run's seconds per iteration by
phase (the history's ``seconds_train`` / ``seconds_hypergrad`` / ``seconds_eval`` /
``seconds_render``, wall-clock), the hypergradient phase over the fine-tune, and how many scenes
the score-function sum ran over. The first iteration and every tenth also check c_k by the jvp
(``c_k = "auto"``), as in any run; so the figures are those of a run, not of one estimate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SEARCHER = 'settings = { scenes_per_iteration = 32, lr = 0.15, step_units = "raw" }'
BUDGET = "iterations = 200"
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "c_k_jvp": {"c_k": "jvp"},
    "gradient_validation_32": {"gradient_validation": 32},
    "no_reuse": {"reuse_iterations": 0},
    "no_reuse_gradient_validation_32": {"reuse_iterations": 0, "gradient_validation": 32},
}
PHASES = ("render", "train", "hypergrad", "eval")


def toml_value(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)


def config_text(variant: dict[str, Any], iterations: int) -> str:
    base = (ROOT / "examples" / "shapes_yolo.toml").read_text()
    assert base.count(SEARCHER) == 1 and base.count(BUDGET) == 1, "examples/shapes_yolo.toml changed its searcher"
    settings = {"scenes_per_iteration": 32, "lr": 0.15, "step_units": "raw", **variant}
    line = "settings = { " + ", ".join(f"{k} = {toml_value(v)}" for k, v in settings.items()) + " }"
    return base.replace(SEARCHER, line).replace(BUDGET, f"iterations = {iterations}")


def one_run(name: str, variant: dict[str, Any], out: Path, iterations: int) -> dict[str, Any]:
    config = out / "configs" / f"{name}.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(config_text(variant, iterations))
    folder = out / name
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "autosim_core.cli", "run", str(config), "--out", str(folder)],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    rows = [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines() if line.strip()]
    last = rows[-1]
    per_iteration = {p: last[f"seconds_{p}"] / len(rows) for p in PHASES}
    return {"settings": variant, "iterations": len(rows), "seconds_per_iteration": per_iteration,
            "hypergrad_over_train": per_iteration["hypergrad"] / per_iteration["train"],
            "scenes_scored": last["estimator"].get("scenes_scored", 32),
            "c_k": [r["estimator"].get("c_k") for r in rows]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-results/detection-phases"))
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--json", type=Path, default=None, help="where the report goes (default OUT/phases.json)")
    args = parser.parse_args()
    runs = {}
    for name, variant in VARIANTS.items():
        runs[name] = one_run(name, variant, args.out, args.iterations)
        r = runs[name]
        print(f"{name:32s} train {r['seconds_per_iteration']['train']:.2f} s  hypergrad "
              f"{r['seconds_per_iteration']['hypergrad']:.2f} s  ({r['hypergrad_over_train']:.2f}x)  "
              f"scenes scored {r['scenes_scored']}")
    report = {"benchmark": "detection-phases", "config": "examples/shapes_yolo.toml", "iterations": args.iterations,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "runs": runs}
    target = args.json or args.out / "phases.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
