"""AutoSimulate on the real nuclei image started from broad domain randomisation (``--start wide``):
does it end at least as good as the randomisation it starts from, with raw and with scaled ψ steps?
Started from a poor hand-set guess (``--start poor``): does it reach that randomisation?

    python benchmarks/nuclei_from_wide.py --out bench-results/nuclei-from-wide [--seeds 5] [--json FILE]
    python benchmarks/nuclei_from_wide.py --start poor --out bench-results/nuclei-from-poor [--json FILE]

``--start wide`` writes three configs from examples/nuclei_unet.toml: AutoSimulate (linear) with
``start = "wide"`` and ``step_units = "raw"`` (``from_wide_raw``) or ``"scaled"``
(``from_wide_scaled``), and the `wide` preset kept fixed (examples/nuclei_unet_wide.toml).
``--start poor`` writes AutoSimulate (linear, the default scaled steps) from the poor guess
(``from_poor``, ``--poor-iterations`` iterations: it has further to go), the poor guess kept fixed
(``fixed_poor``) and `wide` kept fixed. The poor guess is one of ``GUESSES`` (``--guess``):
`initial` with ``small-dim`` nuclei (too many, too small, too dim and too blurred, on too bright a
background: the first tried), ``large-bright`` ones (one or two large, saturated, sharp,
noiseless nuclei on black: the second) — neither scored below `wide` kept fixed — or ``faint``
ones (barely above the background and its noise; the default). Both run
``autosim compare --final-training`` over ``--seeds`` seeds
(the same recipe, budgets and real validation and test halves as benchmarks/nuclei.py). The report
holds each method's fresh-model scores on the real test half (the task's mIoU, object F1 and
two-class mIoU, as benchmarks/nuclei.py measures them) and ψ per run.

Written before the first run of each:
- ``wide``: supports "AutoSimulate does not end below the randomisation it starts from" if each
  AutoSimulate row's fresh test mIoU is at or above `wide`'s mean, or below it by less than the
  larger seed std; refuted by a mean below `wide`'s by more than that std.
- ``poor``: the experiment can tell only if ``fixed_poor``'s fresh test mIoU is below `wide`'s by
  more than the larger seed std (the guess is poor). Then it supports "from a poor guess it
  reaches the randomisation" if ``from_poor``'s mean is at or above `wide`'s, or below it by less
  than the larger seed std of the two; refuted by a mean below `wide`'s by more than that std.
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

METHODS = {"wide": ["from_wide_raw", "from_wide_scaled", "nuclei_unet_wide"],
           "poor": ["from_poor", "fixed_poor", "nuclei_unet_wide"]}
INITIAL = {"wide": "nuclei_unet_wide", "poor": "fixed_poor"}
LEARNED = 'settings = { scenes_per_iteration = 32, lr = 0.15, step_units = "raw" }'
SIMULATOR = "settings = { size = 64 }\n"
GUESSES = {
    # The first guess tried: too many, too small, too dim and too blurred nuclei on too bright a
    # background (the wrong magnification and exposure).
    "small-dim": """
[simulator.overrides]
count = { median = 12.0 }
radius = { median = 4.0 }
brightness = { median = 0.15 }
blur = { mean = 2.5 }
background = { mean = 0.25 }
""",
    # The third: the nuclei barely above the background and its noise (a wrong exposure).
    "faint": """
[simulator.overrides]
brightness = { median = 0.03 }
""",
    # The second: one or two large, saturated, sharp, noiseless nuclei on a black background.
    "large-bright": """
[simulator.overrides]
count = { median = 1.5 }
radius = { median = 14.0 }
brightness = { median = 1.0 }
blur = { mean = 0.2 }
photons = { median = 10000.0 }
read_noise = { mean = 0.002 }
background = { mean = 0.005 }
""",
}


def write_configs(folder: Path, start: str, poor_iterations: int, guess: str = "faint") -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    base = (ROOT / "examples" / "nuclei_unet.toml").read_text()
    assert 'start = "initial"' in base and LEARNED in base and base.count(SIMULATOR) == 1, \
        "examples/nuclei_unet.toml changed its start, searcher or sections"
    configs: dict[str, str] = {}
    if start == "wide":
        for units in ("raw", "scaled"):
            configs[f"from_wide_{units}"] = base.replace('start = "initial"', 'start = "wide"').replace(
                LEARNED, f'settings = {{ scenes_per_iteration = 32, lr = 0.15, step_units = "{units}" }}')
    else:
        poor = base.replace(SIMULATOR, SIMULATOR + GUESSES[guess])
        configs["from_poor"] = poor.replace(LEARNED, "settings = { scenes_per_iteration = 32, lr = 0.15 }").replace(
            "[budget]\niterations = 5", f"[budget]\niterations = {poor_iterations}")
        fixed = (ROOT / "examples" / "nuclei_unet_wide.toml").read_text()
        assert 'start = "wide"' in fixed and fixed.count(SIMULATOR) == 1
        configs["fixed_poor"] = fixed.replace('start = "wide"', 'start = "initial"').replace(SIMULATOR,
                                                                                             SIMULATOR + GUESSES[guess])
        assert f"iterations = {poor_iterations}" in configs["from_poor"]
    configs["nuclei_unet_wide"] = (ROOT / "examples" / "nuclei_unet_wide.toml").read_text()
    paths = []
    for name, text in configs.items():
        path = folder / f"{name}.toml"
        path.write_text(text)
        paths.append(str(path))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--start", choices=sorted(METHODS), default="wide")
    parser.add_argument("--poor-iterations", type=int, default=20, help="from_poor's iterations (--start poor)")
    parser.add_argument("--guess", choices=sorted(GUESSES), default="faint",
                        help="the poor guess (--start poor)")
    parser.add_argument("--out", type=Path, default=None, help="default bench-results/nuclei-from-START")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="where the report goes (default OUT/from_START.json)")
    args = parser.parse_args()
    args.out = args.out or Path(f"bench-results/nuclei-from-{args.start}")
    real_files()
    configs = write_configs(args.out / "configs", args.start, args.poor_iterations, args.guess)
    start = time.perf_counter()
    comparison = compare(configs, INITIAL[args.start], args.out, args)
    wall = time.perf_counter() - start
    image, instances = real_image()
    runs = scored_runs(args.out, METHODS[args.start], args.seeds, image, instances)
    for by_seed in runs.values():
        for r in by_seed.values():
            r.pop("space", None)
    fresh = {e["method"]: {"test": e["fresh_test_metric"], "val": e["fresh_val_metric"]}
             for e in comparison["methods"]}
    report = {"benchmark": f"nuclei-from-{args.start}", "guess": args.guess if args.start == "poor" else None,
              "seeds": args.seeds, "wall_seconds": wall,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
              "configs": {Path(c).stem: Path(c).read_text() for c in configs}, "fresh": fresh,
              "object_f1": spread(runs, "f1"), "binary_miou": spread(runs, "binary_miou"),
              "comparison": comparison, "runs": runs}
    target = args.json or args.out / f"from_{args.start}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report, indent=2) + "\n")
    for method, scores in fresh.items():
        print(f"{method:18s} fresh test {scores['test']['mean']:.4f} ± {scores['test']['std']:.4f}  "
              f"val {scores['val']['mean']:.4f} ± {scores['val']['std']:.4f}")
    print(f"wrote {target} ({wall / 60:.1f} min)")


if __name__ == "__main__":
    main()
