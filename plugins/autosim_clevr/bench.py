"""Images per second of each available backend at 96x96 and 320x240, written to JSON.

    python plugins/autosim_clevr/bench.py --out bench.json [--threads 2] [--count 32]

Scenes come from the ``target`` preset with the image size and samples per pixel fixed, so
the numbers compare backends and sizes on the same content. The Cycles backend is measured
only when ``bpy`` imports.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import time
from typing import Any

import torch

from autosim_clevr.contact_sheet import sample_records
from autosim_clevr.layout import layout

SIZES = ("96x96", "320x240")


def measure(render: Any, size: str, spp: int, count: int, repeats: int) -> float:
    records = sample_records("target", count, seed=7)
    for r in records:
        r["image_size"], r["samples"] = size, spp
    scenes = [layout(r) for r in records]
    render(scenes[:2])  # warm-up: first-call allocations and imports
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        render(scenes)
        best = min(best, time.perf_counter() - start)
    return count / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--count", type=int, default=32, help="images per timed batch (fast backend)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--spp", type=int, nargs="+", default=[1, 4, 16])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from autosim_clevr.fast import render_batch as fast

    results: dict[str, Any] = {"threads": args.threads, "torch": torch.__version__, "machine": platform.processor()
                               or platform.machine(), "images_per_second": {}}
    backends: dict[str, tuple[Any, int]] = {"fast": (fast, args.count)}
    if importlib.util.find_spec("bpy") is not None:
        from autosim_clevr.cycles import render_batch as cycles

        backends["cycles"] = (cycles, 2)
    for name, (render, count) in backends.items():
        table = results["images_per_second"].setdefault(name, {})
        for size in SIZES:
            for spp in args.spp:
                n = count if size == "96x96" else max(2, count // 4)
                rate = measure(render, size, spp, n, args.repeats)
                table[f"{size}@{spp}spp"] = round(rate, 2)
                print(f"{name:6s} {size:8s} spp={spp:3d}: {rate:8.2f} images/s", flush=True)
    with open(args.out, "w") as fh:
        json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
