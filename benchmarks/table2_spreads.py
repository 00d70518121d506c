"""Which half of AutoSimulate's learned psi does a fresh model's score follow: its centres or its spreads?

    python benchmarks/table2_spreads.py bench-results/table2 OUT.json

For each seed of `autosimulate_linear` in a finished Table 2 benchmark, two distributions scored as
the benchmark scores every psi (``autosim train``'s fresh model, the run's own fresh seed): the
learned centres with the starting spreads, and the starting centres with the learned spreads.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

LABELS = ("learned_centres_start_spreads", "start_centres_learned_spreads")


def spaces(run: Path) -> dict[str, Any]:
    from autosim_core.space import ParameterSpace

    learned = ParameterSpace.from_dict(json.loads((run / "psi.json").read_text())["space"])
    start = ParameterSpace.from_dict(json.loads((run / "config.json").read_text())["space"])
    spread = {name: {"std": float(fam.std)} for name, fam in start.parameters.items()
              if fam.learn and hasattr(fam, "std") and not hasattr(fam, "choices")}
    learned_spread = {name: {"std": float(learned[name].std)} for name in spread}
    return {LABELS[0]: learned.override(spread), LABELS[1]: start.override(learned_spread)}


def job(task: tuple[str, str, int]) -> dict[str, Any]:
    import torch

    from autosim_core.final import FinalTrainer

    torch.set_num_threads(1)
    run, label, seed = task
    _, result = FinalTrainer(run).train(spaces(Path(run))[label], seed)
    return {"run": run, "psi": label, "seed": seed, "fresh_test": result["test"]["metric"]}


def main() -> None:
    root, out = Path(sys.argv[1]), Path(sys.argv[2])
    tasks = []
    for run in sorted((root / "autosimulate_linear").glob("seed-*")):
        seed = json.loads((run / "final" / "final.json").read_text())["seeds"][0]
        tasks += [(str(run), label, seed) for label in LABELS]
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        results = list(pool.map(job, tasks))
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
