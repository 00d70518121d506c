"""Rendering throughput of the executors: inline against local worker processes and Ray with 1
and 2 workers, on the ``shapes`` simulator of autosim-yolo (128 px images by default) or another
(``--simulator arnold --simulator-settings '{"threads": 1}'``: Blender Cycles).

Each executor first renders one batch (workers start and load the simulator: reported as
``startup_seconds``), then ``--repeat`` batches of ``--images`` scenes, the same scenes for
every executor; the best batch gives the images per second. The JSON ends with projections of
``--project-images`` images on ``--project-cores`` cores from these costs (``project``).

``--blackbox`` adds a random search (shapes + YOLOv3-tiny, one batch of ``--blackbox-batch``
evaluations, each rendering ``--blackbox-images`` scenes and training a fresh detector) run
inline and with its evaluations on 2 worker processes: the wall seconds of each and whether
the two runs' rows are equal. Writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from autosim_core.config import parse_config
from autosim_core.run import Run


def make_run(executor: dict[str, Any], image_size: int, folder: Path, simulator: str = "shapes",
             settings: dict[str, Any] | None = None) -> Run:
    config = {
        "seed": 0,
        "simulator": {"name": simulator, "settings": {"image_size": image_size, **(settings or {})}},
        "task": {"name": "toy-logistic"},
        "searcher": {"name": "fixed"},
        "training": {"device": "cpu"},
        "budget": {"iterations": 1},
        "executor": executor,
    }
    return Run(parse_config(config), folder)


def measure(executor: dict[str, Any], images: int, repeat: int, image_size: int, folder: Path,
            simulator: str = "shapes", settings: dict[str, Any] | None = None) -> dict[str, Any]:
    run = make_run(executor, image_size, folder, simulator, settings)
    psi = run.space.init_psi()
    try:
        start = time.perf_counter()
        run.render(run.space, psi, images, torch.Generator().manual_seed(0), list(range(images)))
        startup = time.perf_counter() - start
        times, checksum = [], 0.0
        for r in range(repeat):
            generator = torch.Generator().manual_seed(1 + r)
            start = time.perf_counter()
            _, examples = run.render(run.space, psi, images, generator, list(range(images)))
            times.append(time.perf_counter() - start)
            checksum += float(sum(e.image.double().sum() for e in examples))
    finally:
        run.close()
    best = min(times)
    return {**executor, "images": images, "startup_seconds": startup, "batch_seconds": times,
            "images_per_second": images / best, "seconds_per_image": best / images, "checksum": checksum}


def blackbox_config(executor: dict[str, Any], image_size: int, batch: int, images: int,
                    cache: Path) -> dict[str, Any]:
    return {
        "seed": 0,
        "simulator": {"name": "shapes", "settings": {"image_size": image_size}},
        "task": {"name": "yolo", "settings": {"variant": "tiny", "input_size": image_size, "width": 0.25}},
        "searcher": {"name": "random", "settings": {"batch": batch, "scenes_per_evaluation": images, "epochs": 8}},
        "training": {"device": "cpu", "batch_size": 16, "lr": 0.003},
        "budget": {"iterations": batch},
        "validation": {"preset": "target", "count": 32, "seed": 1001},
        "executor": executor,
        "cache_dir": str(cache),
    }


def measure_blackbox(image_size: int, batch: int, images: int, folder: Path) -> dict[str, Any]:
    """One batch of random-search evaluations inline and on 2 worker processes (the validation
    set is rendered into the cache first, so neither run pays for it)."""
    results: dict[str, Any] = {}
    rows: dict[str, list[Any]] = {}
    for name, executor in (("inline", {"kind": "inline"}), ("processes-2", {"kind": "processes", "workers": 2})):
        run = Run(parse_config(blackbox_config(executor, image_size, batch, images, folder / "cache")), folder / name)
        if name == "inline":
            run.load_data("validation")
        start = time.perf_counter()
        run.execute()
        run.close()
        results[name] = {"wall_seconds": time.perf_counter() - start}
        history = [json.loads(line) for line in (folder / name / "history.jsonl").read_text().splitlines()]
        rows[name] = [(r["point"], r["val_metric"], r["train_loss"]) for r in history if "event" not in r]
    return {"evaluations": batch, "images_per_evaluation": images, "image_size": image_size, **results,
            "speedup": results["inline"]["wall_seconds"] / results["processes-2"]["wall_seconds"],
            "same_rows": rows["inline"] == rows["processes-2"]}


def project(results: dict[str, dict[str, Any]], total_images: int, cores: int,
            render_seconds: float | None = None) -> dict[str, Any]:
    """Seconds to render ``total_images`` on ``cores`` Ray workers: the render cost per image
    divided over the cores, plus the per-image cost of moving examples to the run's process
    (Ray with one worker minus inline; paid serially by the run), plus one start of the
    workers. ``render_seconds`` replaces the measured render cost per image (a slower renderer)."""
    per_image = results["inline"]["seconds_per_image"] if render_seconds is None else render_seconds
    ray1 = results.get("ray-1") or results["processes-1"]
    transfer = max(0.0, ray1["seconds_per_image"] - results["inline"]["seconds_per_image"])
    seconds = total_images * (per_image / cores + transfer) + ray1["startup_seconds"]
    return {"images": total_images, "cores": cores, "render_seconds_per_image": per_image,
            "transfer_seconds_per_image": transfer, "startup_seconds": ray1["startup_seconds"],
            "inline_seconds": total_images * per_image, "projected_seconds": seconds,
            "speedup": total_images * per_image / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--project-images", type=int, default=10_000)
    parser.add_argument("--project-cores", type=int, default=64)
    parser.add_argument("--project-render-seconds", type=float, default=2.0,
                        help="a slower renderer's seconds per image for the second projection (Cycles-like)")
    parser.add_argument("--no-ray", action="store_true", help="skip Ray (where it is not installed)")
    parser.add_argument("--simulator", default="shapes", help="the simulator rendering (default: shapes)")
    parser.add_argument("--simulator-settings", type=json.loads, default={},
                        help='its settings besides image_size, as JSON (e.g. \'{"threads": 1}\')')
    parser.add_argument("--blackbox", action="store_true", help="also time black-box evaluations on 2 workers")
    parser.add_argument("--blackbox-batch", type=int, default=4)
    parser.add_argument("--blackbox-images", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(1)

    executors: dict[str, dict[str, Any]] = {"inline": {"kind": "inline"}}
    for workers in (1, 2):
        executors[f"processes-{workers}"] = {"kind": "processes", "workers": workers}
    ray_started = False
    if not args.no_ray:
        import ray

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        ray_started = True
        for workers in (1, 2):
            executors[f"ray-{workers}"] = {"kind": "ray", "workers": workers}
    results: dict[str, dict[str, Any]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name, executor in executors.items():
                results[name] = measure(executor, args.images, args.repeat, args.image_size, Path(tmp) / name,
                                        args.simulator, args.simulator_settings)
                print(f"{name}: {results[name]['images_per_second']:.1f} images/s "
                      f"(start {results[name]['startup_seconds']:.1f} s)", flush=True)
            blackbox = (measure_blackbox(args.image_size, args.blackbox_batch, args.blackbox_images,
                                         Path(tmp) / "blackbox") if args.blackbox else None)
    finally:
        if ray_started:
            import ray

            ray.shutdown()
    # Exact: a renderer whose arithmetic depends on torch's thread count (shapes' does, in the
    # last bit) gives other checksums in workers that run another number of threads.
    checksums = {r["checksum"] for r in results.values()}
    reference = results["inline"]["checksum"]
    inline = results["inline"]["seconds_per_image"]
    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "load_average": os.getloadavg()},
        "simulator": args.simulator, "simulator_settings": args.simulator_settings,
        "image_size": args.image_size,
        "same_images_everywhere": len(checksums) == 1,
        "checksum_difference_vs_inline": {name: r["checksum"] - reference for name, r in results.items()},
        "results": results,
        "time_vs_inline": {name: r["seconds_per_image"] / inline for name, r in results.items()},
        "projection": project(results, args.project_images, args.project_cores),
        "projection_slow_renderer": project(results, args.project_images, args.project_cores,
                                            args.project_render_seconds),
        "blackbox_evaluations": blackbox,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("same_images_everywhere", "checksum_difference_vs_inline",
                                             "time_vs_inline", "projection",
                                             "projection_slow_renderer", "blackbox_evaluations")}, indent=2))


if __name__ == "__main__":
    main()
