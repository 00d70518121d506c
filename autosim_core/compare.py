"""Several runs under their own budgets, side by side: a table and the curves (paper, Table 2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

COLUMNS = ("run", "searcher", "estimator", "images", "seconds", "best_val_metric", "images_to_best",
           "seconds_to_best", "final_val_metric", "test_metric")


def comparison_row(name: str, run_dir: Path) -> dict[str, Any]:
    config = json.loads((run_dir / "config.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    best = summary.get("best") or {}
    return {
        "run": name, "searcher": config["searcher"]["name"], "estimator": (config.get("estimator") or {}).get("name"),
        "images": summary["images"], "seconds": round(summary["seconds"], 1),
        "best_val_metric": best.get("val_metric"), "images_to_best": best.get("images"),
        "seconds_to_best": round(best["seconds"], 1) if "seconds" in best else None,
        "final_val_metric": summary.get("val", {}).get("metric"),
        "test_metric": summary.get("test", {}).get("metric"),
        "psi": summary.get("psi"),
    }


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}" if "metric" in column else f"{value:.1f}"
    return str(value)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(c, row[c]) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plot_comparison(runs: dict[str, Path], out_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for name, run_dir in runs.items():
        rows = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines() if line.strip()]
        rows = [r for r in rows if r.get("val_metric") is not None]
        for ax, key in zip(axes, ("images", "seconds"), strict=True):
            ax.plot([r[key] for r in rows], [r["val_metric"] for r in rows], marker=".", label=name)
    axes[0].set_xlabel("images generated")
    axes[1].set_xlabel("seconds")
    axes[0].set_ylabel("validation metric")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)


def write_comparison(runs: dict[str, Path], out_dir: Path) -> list[dict[str, Any]]:
    rows = [comparison_row(name, run_dir) for name, run_dir in runs.items()]
    (out_dir / "comparison.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out_dir / "comparison.md").write_text(markdown_table(rows))
    plot_comparison(runs, out_dir / "comparison.png")
    return rows
