"""Does a black-box evaluation rank distributions as a fresh model trained on them does?

    python benchmarks/reward_rank.py --out bench-results/reward-rank [--points 8] [--jobs 2]

On the Table 2 problem (benchmarks/table2.py's BASE), for the presets `initial`, `target` and
`wide` and ``--points`` points drawn by random search from the black-box box, two scores of the
same psi: the reward of one black-box evaluation (a fresh UNet trained on 120 renders for 16
epochs, scored on validation: benchmarks/table2.py's EVALUATION) and the fresh-model score of
``autosim train`` (table2.FINAL: a fresh UNet trained on more renders, scored on test). Writes
OUT/reward-rank.json with every psi's two scores and their Spearman rank correlation: the black-box
searchers can only find what their reward ranks.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import table2


def ranks(values: list[float]) -> np.ndarray:
    """Ranks 1..n, ties given their mean rank."""
    array = np.asarray(values, dtype=float)
    order = array.argsort(kind="stable")
    result = np.empty(len(array))
    result[order] = np.arange(1, len(array) + 1)
    for value in np.unique(array):
        tied = array == value
        result[tied] = result[tied].mean()
    return result


def spearman(a: list[float], b: list[float]) -> float:
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def base_run(folder: Path) -> Path:
    """A finished one-iteration fixed run of the Table 2 problem: what the trainers read their setup from."""
    from autosim_core.config import parse_config
    from autosim_core.run import Run

    if not (folder / "summary.json").exists():
        config = copy.deepcopy(table2.BASE)
        config.update(searcher={"name": "fixed", "settings": {"scenes_per_iteration": 32}},
                      budget={"iterations": 1}, final_training=copy.deepcopy(table2.FINAL))
        Run(parse_config(config), folder).execute()
    return folder


def score(task: tuple[str, int, dict[str, Any], str]) -> dict[str, Any]:
    """Both scores of one psi (a space as a dict)."""
    import torch

    from autosim_core.final import FinalTrainer
    from autosim_core.space import ParameterSpace

    torch.set_num_threads(1)
    label, seed, space, folder = task
    result: dict[str, Any] = {"psi": label, "seed": seed}
    evaluation = table2.EVALUATION
    for key, trainer in (
        ("reward", FinalTrainer(folder, images=evaluation["scenes_per_evaluation"], epochs=evaluation["epochs"])),
        ("fresh", FinalTrainer(folder)),
    ):
        start = time.perf_counter()
        _, scores = trainer.train(ParameterSpace.from_dict(space), seed)
        result[key] = {"val": scores["val"]["metric"], "test": scores["test"]["metric"],
                       "seconds": time.perf_counter() - start}
        trainer.close()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench-results/reward-rank"))
    ap.add_argument("--points", type=int, default=8, help="random-search points besides the presets")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from autosim_core.config import parse_config
    from autosim_core.proposers import RandomProposer
    from autosim_core.run import Run
    from autosim_core.searchbox import SearchBox

    folder = base_run(args.out / "base-run")
    run = Run(parse_config(json.loads(json.dumps({k: v for k, v in json.loads(
        (folder / "config.json").read_text()).items() if k not in ("space", "estimator")}))), folder)
    spaces = {name: run.plan.space_for(name, {}, "simulator").to_dict() for name in ("initial", "target", "wide")
              if name in run.presets}
    # The box of the learnable parameters as the benchmark's configs declare them (from `initial`).
    box = SearchBox(run.space)
    proposer = RandomProposer(box, args.seed, batch=args.points)
    for i, point in enumerate(proposer.propose()):
        spaces[f"random-{i}"] = box.space_at(point).to_dict()
    tasks = [(label, 10_000 + args.seed, space, str(folder)) for label, space in spaces.items()]
    start = time.perf_counter()
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        results = list(pool.map(score, tasks))
    wall = time.perf_counter() - start
    report = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "jobs": args.jobs},
        "evaluation": table2.EVALUATION, "final_training": table2.FINAL, "wall_seconds": wall,
        "psi": results,
        "spearman_reward_val_vs_fresh_test": spearman([r["reward"]["val"] for r in results],
                                                      [r["fresh"]["test"] for r in results]),
        "spearman_fresh_val_vs_fresh_test": spearman([r["fresh"]["val"] for r in results],
                                                     [r["fresh"]["test"] for r in results]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "reward-rank.json").write_text(json.dumps(report, indent=2) + "\n")
    for r in results:
        print(f"{r['psi']:>10}  reward (val) {r['reward']['val']:.3f}  fresh test {r['fresh']['test']:.3f}")
    print(f"Spearman(reward, fresh test) = {report['spearman_reward_val_vs_fresh_test']:.2f} over {len(results)} psi; "
          f"wall {wall / 60:.1f} min")


if __name__ == "__main__":
    main()
