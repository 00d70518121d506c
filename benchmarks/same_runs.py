"""Whether two trees of run folders hold the same runs: for each run folder of A, the one of the
same name in B has equal history rows, psi.json, config.json, summary and checkpoint, the
seconds aside.

    python benchmarks/same_runs.py A B      # exit code 0 when every run is the same

Left out of the comparison: every ``seconds*`` and ``elapsed`` field (wall time), and the
checkpoint's ``torch_rng`` — torch seeds its global generator afresh in every process, so two
runs of the same code differ there while nothing of a run draws from it. Use it to check that a
change of the code changed no result: run the same configs before and after, then compare.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

IGNORED = ("elapsed", "torch_rng")


def without_times(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_times(v) for k, v in value.items()
                if not (isinstance(k, str) and (k.startswith("seconds") or k in IGNORED))}
    if isinstance(value, list | tuple):
        return type(value)(without_times(v) for v in value)
    return value


def equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return (isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
                and bool(((a == b) | (a.isnan() & b.isnan())).all()))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def compare_run(a: Path, b: Path) -> dict[str, bool]:
    def rows(folder: Path) -> list[Any]:
        return [without_times(json.loads(line)) for line in (folder / "history.jsonl").read_text().splitlines()]

    def read(folder: Path, name: str) -> Any:
        return without_times(json.loads((folder / name).read_text()))

    def checkpoint(folder: Path) -> Any:
        return without_times(torch.load(folder / "checkpoint.pt", weights_only=True))

    return {"history": rows(a) == rows(b), "psi.json": (a / "psi.json").read_bytes() == (b / "psi.json").read_bytes(),
            "config.json": read(a, "config.json") == read(b, "config.json"),
            "summary": read(a, "summary.json") == read(b, "summary.json"),
            "checkpoint": equal(checkpoint(a), checkpoint(b))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    args = ap.parse_args()
    runs = sorted(p.parent.relative_to(args.a) for p in args.a.rglob("history.jsonl"))
    if not runs:
        sys.exit(f"no run folder (history.jsonl) under {args.a}")
    same = True
    for run in runs:
        result = compare_run(args.a / run, args.b / run)
        same &= all(result.values())
        print(f"{run}: " + ", ".join(f"{k} {'same' if v else 'DIFFERENT'}" for k, v in result.items()))
    print("the same runs" if same else "the runs differ")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
