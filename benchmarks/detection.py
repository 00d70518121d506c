"""The paper's Tables 3 and 4 on a laptop CPU: object placement (``arnold`` simulator, Blender
Cycles) + YOLOv3-tiny, every method under the same image budget, over several seeds.

    python benchmarks/detection.py --out bench-results/detection [--seeds 2] [--budget-images 320] [--jobs 2]
    python benchmarks/detection.py --out /tmp/detection-smoke --smoke     # 1 seed, 2 iterations, tiny sets
    python benchmarks/detection.py --out bench-results/detection-pretrained --pretrain-images 640

``--pretrain-images N`` starts every detector (each method, each seed) from one trained on N
renders of the uniform start for ``--pretrain-epochs`` epochs (YOLO-tiny, and YOLO-spp for its
ablation), made once into OUT/pretrained-<variant>.pt: the paper's detectors start pretrained.

Every (method, seed) runs through ``autosim compare --resume`` on its own executor into
OUT/<method>/seed-<i> (finished runs are kept, interrupted ones resumed), ``--jobs`` at a time
in worker processes with Cycles and torch on one thread each; the comparison writes
OUT/comparison.md (the Table 3 analog: best val
mAP@0.5, the images and seconds to it, test mAP; mean ± std over seeds; threshold: Bayesian
optimisation's best), and this script OUT/detection.md + .json: for every method the
probability its final psi puts on the cells most like the target domain (``useful_cells``:
location 8, 7 and 5 of each room at high quality; 9 of 54 cells, 1/6 under the uniform start).

Methods (Table 3): AutoSimulate with each estimator (linear, quadratic, approx-quadratic,
no-val), random search, Bayesian optimisation, REINFORCE, the uniform distribution kept fixed
(the paper's hand-set one) and the oracle (trained on the target domain itself). Table 4's
ablations ride along: the estimators are Table 3's four rows; ``autosimulate_linear_freeze12``
freezes Darknet layers 0-11 (the paper freezes 12); ``autosimulate_linear_spp`` trains
YOLOv3-spp instead of tiny.

The budget, from costs measured on this two-core machine while other work shared it
(plugins/autosim_arnold/bench.py at 64 x 64 px on one thread, and this script's --smoke run):

* rendering: low quality 0.10-0.16 s/image, high 0.7-1.4 s (OpenImageDenoise alone ~0.35 s),
  so ~0.6 s/image under the uniform start (a psi that moves onto high-quality cells costs up to
  ~1 s); the target domain (high quality, five objects) ~1.2 s/image;
* training YOLO-tiny (width 0.25, 64 px): ~0.1 s per step of 16 images (spp: ~0.5 s). Rendering
  dominates, so each image is used hard: an AutoSimulate iteration renders K = 16 images (~10 s)
  and fine-tunes on them for 24 epochs (24 steps, ~2.4 s), plus validation on 48 images and
  the hypergradient (~1 s; quadratic with 5 CG steps ~3 s): ~13.5 s per iteration;
* a run of 320 images = 20 iterations: ~270 s (quadratic ~310 s, spp ~500 s, the oracle on
  target renders ~440 s); a black-box run = 4 evaluations of 80 images, each a fresh detector
  trained for 48 epochs (240 steps): 4 x (48 + 24) s ~ 290 s;
* per seed: 6 x 270 (linear, approx-quadratic, no-val, freeze12, fixed; quadratic 310) + 440 +
  500 + 3 x 290 ~ 3,450 s; 2 seeds = 6,900 s of single-core work, 2 runs at a time: ~58 min,
  plus the validation (48) and test (64) sets rendered once (~2.5 min): ~60 minutes on two
  otherwise idle cores, a third of the 90-minute limit to spare. More seeds or images do not fit.
  (The --smoke run took 16 minutes with other work keeping the load average near 9: about four
  times these costs; the full run needs the machine to itself.)

With this budget the detector stays weak (trained from scratch on 320 images at 64 px; the
shapes demo's oracle reaches mAP@0.5 0.14 after 1,920 images), so the psi each method ends with
(the mass on the target-like cells) is the clearer signal and is reported beside the mAPs.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

# Running one (method, seed) and rendering the evaluation sets work as for Table 2.
from table2 import compare, render_evaluation_sets

BASE: dict[str, Any] = {
    "seed": 0,
    "simulator": {"name": "arnold", "start": "uniform", "settings": {"image_size": 64, "threads": 1}},
    "task": {"name": "yolo", "settings": {"variant": "tiny", "input_size": 64, "width": 0.25}},
    "training": {"epochs": 24, "batch_size": 16, "lr": 0.003},
    "budget": {"images": 320},
    "validation": {"preset": "target", "count": 48, "seed": 1001},
    "test": {"preset": "target", "count": 64, "seed": 2002},
}
AUTOSIM = {"name": "autosimulate", "settings": {"scenes_per_iteration": 16, "lr": 0.3}}
# One black-box evaluation: 80 images, a fresh detector trained on them for 48 epochs (240 steps,
# half of what AutoSimulate's model takes over the run); 320 images buy 4 evaluations (random: 2
# batches of 2; BO: 2 random points then 2 guided; REINFORCE: 2 policy steps of 2).
EVALUATION = {"scenes_per_evaluation": 80, "epochs": 48}


def _autosim(estimator: str, task: dict[str, Any] | None = None, **estimator_settings: Any) -> dict[str, Any]:
    method: dict[str, Any] = {"searcher": copy.deepcopy(AUTOSIM), "estimator": {"name": estimator}}
    if estimator_settings:
        method["estimator"]["settings"] = estimator_settings
    if task:
        method["task"] = {"name": "yolo", "settings": {**BASE["task"]["settings"], **task}}
    return method


METHODS: dict[str, dict[str, Any]] = {
    "autosimulate_linear": _autosim("linear"),
    "autosimulate_approx_quadratic": _autosim("approx-quadratic"),
    "autosimulate_quadratic": _autosim("quadratic", damping=0.01, max_iter=5),
    "autosimulate_no_val": _autosim("no-val"),
    "random": {"searcher": {"name": "random", "settings": {**EVALUATION, "batch": 2}}},
    "bayesian": {"searcher": {"name": "bayesian", "settings": {**EVALUATION, "init_points": 2}}},
    "reinforce": {"searcher": {"name": "reinforce", "settings": {**EVALUATION, "batch": 2}}},
    "fixed_uniform": {"searcher": {"name": "fixed", "settings": {"scenes_per_iteration": 16}}},
    "oracle": {"searcher": {"name": "fixed", "settings": {"scenes_per_iteration": 16}},
               "simulator": {**BASE["simulator"], "start": "target"}},
    # Table 4
    "autosimulate_linear_freeze12": _autosim("linear", task={"freeze": 12}),
    "autosimulate_linear_spp": _autosim("linear", task={"variant": "spp"}),
}
ORDER = ["oracle", "autosimulate_linear_spp", "autosimulate_quadratic", "bayesian", "reinforce", "random",
         "autosimulate_linear", "autosimulate_approx_quadratic", "autosimulate_no_val",
         "autosimulate_linear_freeze12", "fixed_uniform"]  # longest first


def configs(smoke: bool) -> dict[str, dict[str, Any]]:
    out = {}
    for name, changes in METHODS.items():
        config = copy.deepcopy(BASE)
        config.update(copy.deepcopy(changes))
        if smoke:
            config["validation"]["count"] = config["test"]["count"] = 8
            config["budget"] = {"images": 32}
            if config["searcher"]["name"] in ("random", "bayesian", "reinforce"):
                config["searcher"]["settings"].update(scenes_per_evaluation=16, epochs=2)
                if "init_points" in config["searcher"]["settings"]:
                    config["searcher"]["settings"]["init_points"] = 1
        out[name] = config
    return out


PRETRAIN_SEED = 4242
"""Seed of the pretraining renders: apart from the methods' seeds (0, 1, ...) and the sets'."""


def pretrain(out: Path, images: int, epochs: int, variants: set[str]) -> dict[str, Any]:
    """A detector of each variant trained on ``images`` renders of the uniform start (the paper's
    detectors start pretrained; nothing can be downloaded here, so they start from the simulator's
    generic output): OUT/pretrained-<variant>.pt, made once and reused on a rerun."""
    import torch

    from autosim_core.config import parse_config
    from autosim_core.run import Run

    files = {v: out / f"pretrained-{v}.pt" for v in sorted(variants)}
    seconds: dict[str, float] = {}
    missing = [v for v, f in files.items() if not f.exists()]
    if missing:
        config = copy.deepcopy(BASE)
        config.update(seed=PRETRAIN_SEED, searcher={"name": "fixed"}, budget={"iterations": 1})
        config["simulator"]["settings"]["threads"] = os.cpu_count() or 1
        torch.set_num_threads(os.cpu_count() or 1)
        renderer = Run(parse_config(config), out / "pretrain")
        start = time.perf_counter()
        _, batch = renderer.render_training(renderer.space.init_psi(), images)
        seconds["render"] = time.perf_counter() - start
        for variant in missing:
            config["task"] = {"name": "yolo", "settings": {**BASE["task"]["settings"], "variant": variant}}
            trainer = Run(parse_config(config), out / "pretrain")
            model = trainer.create_model()
            start = time.perf_counter()
            loss = trainer.fine_tune(model, trainer.create_model_optimizer(model), batch, epochs=epochs)
            seconds[f"train_{variant}"] = time.perf_counter() - start
            torch.save(model.state_dict(), files[variant])
            print(f"pretrained {variant}: {images} images, {epochs} epochs, last loss {loss:.3f}", flush=True)
    return {"images": images, "epochs": epochs, "seed": PRETRAIN_SEED, "seconds": seconds,
            "files": {v: str(f) for v, f in files.items()}}


def useful_mass(run_dir: Path) -> float | None:
    """Probability the run's final psi puts on the cells most like the target domain."""
    from autosim_arnold.params import ArnoldSettings, cells, useful_cells

    psi_file = run_dir / "psi.json"
    if not psi_file.exists():
        return None
    probs = json.loads(psi_file.read_text())["psi"]["cell"]["probs"]
    if not set(probs) & set(cells(ArnoldSettings())):
        return None  # the oracle draws from the target room, outside the 54 cells
    useful = set(useful_cells(ArnoldSettings()))
    return sum(p for cell, p in probs.items() if cell in useful)


def cells_table(out: Path, methods: list[str]) -> tuple[str, dict[str, Any]]:
    rows, data = [], {}
    for method in methods:
        masses = [m for d in sorted((out / method).glob("seed-*")) if (m := useful_mass(d)) is not None]
        data[method] = masses
        if not masses:
            continue
        spread = f" ± {statistics.stdev(masses):.2f}" if len(masses) > 1 else ""
        found = sum(m > 1 / 6 + 0.05 for m in masses)
        rows.append(f"| {method} | {statistics.mean(masses):.2f}{spread} | {found}/{len(masses)} |")
    header = ["| method | final psi's mass on the 9 target-like cells (uniform: 0.17) | seeds that moved "
              "towards them (> 0.22) |", "|---|---|---|"]
    return "\n".join(header + rows) + "\n", data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench-results/detection"))
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--budget-images", type=int, default=None, help="default: 320 (smoke: 32)")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--smoke", action="store_true", help="1 seed, 32 images (2 iterations), 8-image sets")
    ap.add_argument("--pretrain-images", type=int, default=0,
                    help="start every detector from one trained on this many uniform renders (0: from scratch)")
    ap.add_argument("--pretrain-epochs", type=int, default=20)
    ap.add_argument("--image-size", type=int, default=None,
                    help="render and detector input size for every method (default: 64)")
    ap.add_argument("--epochs", type=int, default=None, help="[training].epochs for every method (default: 24)")
    args = ap.parse_args()
    # A sizing for every method at once (pilots for the experiment's size): the pretraining's
    # config (BASE) and every method's.
    if args.image_size:
        BASE["simulator"]["settings"]["image_size"] = args.image_size
        BASE["task"]["settings"]["input_size"] = args.image_size
    if args.epochs:
        BASE["training"]["epochs"] = args.epochs
    if args.smoke:
        args.seeds = 1
    all_configs = configs(args.smoke)
    for config in all_configs.values():
        if args.image_size:
            config["simulator"]["settings"]["image_size"] = args.image_size
            config["task"]["settings"]["input_size"] = args.image_size
        if args.epochs:
            config["training"]["epochs"] = args.epochs
    budget = args.budget_images or all_configs["fixed_uniform"]["budget"]["images"]

    import tomli_w

    (args.out / "configs").mkdir(parents=True, exist_ok=True)
    wall_start = time.perf_counter()
    pretrained = None
    if args.pretrain_images:
        variants = {all_configs[name]["task"]["settings"]["variant"] for name in args.methods}
        pretrained = pretrain(args.out.resolve(), args.pretrain_images, args.pretrain_epochs, variants)
    paths = []
    for name in args.methods:
        config = copy.deepcopy(all_configs[name])
        config["budget"] = {"images": budget}
        if pretrained is not None:
            settings = config["task"]["settings"]
            settings["weights"] = pretrained["files"][settings["variant"]]
        path = args.out / "configs" / f"{name}.toml"
        path.write_text(f"# {name}: written by benchmarks/detection.py\n" + tomli_w.dumps(config))
        paths.append(path)

    render_evaluation_sets(copy.deepcopy(all_configs["fixed_uniform"]), args.out / "evaluation-sets")
    paths.sort(key=lambda path: ORDER.index(path.stem))
    compare(paths, args.out, args.seeds, budget, args.jobs,
            *(["--threshold-from", "bayesian"] if "bayesian" in args.methods else []),
            *(["--oracle", "oracle"] if "oracle" in args.methods else []),
            *(["--initial", "fixed_uniform"] if "fixed_uniform" in args.methods else []))
    wall = time.perf_counter() - wall_start

    table, masses = cells_table(args.out, args.methods)
    machine = {"python": platform.python_version(), "cpus": os.cpu_count(),
               "processor": platform.processor() or platform.machine(), "jobs": args.jobs}
    (args.out / "detection.json").write_text(json.dumps(
        {"machine": machine, "seeds": args.seeds, "budget_images": budget, "wall_seconds": wall,
         "pretrained": pretrained,
         "useful_cell_mass": masses}, indent=2) + "\n")
    comparison = (args.out / "comparison.md").read_text()
    (args.out / "detection.md").write_text(comparison + "\n" + table)
    print(table)
    print(f"wall: {wall / 60:.1f} min for {len(paths) * args.seeds} runs, {args.jobs} at a time")


if __name__ == "__main__":
    main()
