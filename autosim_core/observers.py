"""Observers: progress on the console and plots of a run's curves, as hook implementations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .hookspecs import hookimpl


class ConsoleProgress:
    """One line per iteration: images, seconds, validation loss and metric."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False)

    @hookimpl
    def on_run_start(self, run: Any) -> None:
        c = run.config
        estimator = f" · estimator {c.estimator.name}" if run.uses_estimator else ""
        self.console.print(f"[bold]autosim[/] {c.searcher.name} · simulator {c.simulator.name} · "
                           f"task {c.task.name}{estimator} → {run.out_dir}", soft_wrap=True)

    @hookimpl
    def on_iteration(self, row: dict[str, Any]) -> None:
        val = ""
        if row.get("val_metric") is not None:
            val = f"  val loss {row['val_loss']:.4f}  metric {row['val_metric']:.4f}"
        self.console.print(f"it {row['iteration']:4d}  images {row['images']:6d}  "
                           f"{row['seconds']:7.1f} s{val}")

    @hookimpl
    def on_run_end(self, run: Any, summary: dict[str, Any]) -> None:
        line = f"done: {summary['iterations']} iterations, {summary['images']} images, {summary['seconds']:.1f} s"
        for key in ("val", "test"):
            if key in summary:
                line += f"  {key} metric {summary[key]['metric']:.4f}"
        self.console.print(line)
        split = summary["seconds_split"]
        self.console.print("seconds: " + ", ".join(f"{phase} {split[phase]:.1f}" for phase in split)
                           + f" (evaluation sets {summary['seconds_setup']:.1f})", soft_wrap=True)
        learned = [name for name in summary["psi"] if run.space[name].learn]
        if learned and summary["psi"] != summary["psi_start"]:
            self.console.print(psi_table(summary, learned))


def _number(x: float) -> str:
    return f"{x:.3g}"


def _readable(value: dict[str, Any]) -> str:
    """One parameter of a described psi, in the parameter's own units: the centre and the
    10-90 % range of the values rendered; a categorical's probabilities (the 3 likeliest of
    more than 4 choices)."""
    if "probs" in value:
        probs = sorted(value["probs"].items(), key=lambda kv: -kv[1]) if len(value["probs"]) > 4 else \
            list(value["probs"].items())
        shown = ", ".join(f"{choice} {p:.2f}" for choice, p in probs[:3 if len(probs) > 4 else 4])
        return shown + (f", … ({len(probs) - 3} more)" if len(probs) > 4 else "")
    if "p" in value:
        return f"p(True) {value['p']:.2f}"
    text = _number(value["mean"] if "mean" in value else value["median"])
    if "p10" in value and "p90" in value:
        text += f" [{_number(value['p10'])}, {_number(value['p90'])}]"
    return text


def psi_table(summary: dict[str, Any], names: list[str]) -> Any:
    """Learned parameters: where they started, where they are, where the validation data are.

    Values are in the parameters' units: the mean (median for log-normals) and, in brackets,
    the 10-90 % range of the rendered values; categoricals show their probabilities.
    """
    from rich.table import Table

    target = summary.get("psi_validation")
    table = Table("parameter", "start", "learned", *(["validation data"] if target else []), box=None,
                  caption="mean or median [10 %, 90 % of rendered values]; categoricals: probabilities")
    for name in names:
        row = [name, _readable(summary["psi_start"][name]), _readable(summary["psi"][name])]
        if target:
            row.append(_readable(target[name]))
        table.add_row(*row)
    return table


def plot_history(history_path: str | Path, out_path: str | Path, title: str = "") -> Path | None:
    """Validation metric against images and against seconds, side by side (PNG)."""
    rows = [json.loads(line) for line in Path(history_path).read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("val_metric") is not None]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    metric = [r["val_metric"] for r in rows]
    for ax, key, label in ((axes[0], "images", "images generated"), (axes[1], "seconds", "seconds")):
        ax.plot([r[key] for r in rows], metric, marker=".")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation metric")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return Path(out_path)


class PlotCurves:
    """Writes ``curves.png`` into the run folder when the run ends."""

    @hookimpl
    def on_run_end(self, run: Any) -> None:
        c = run.config
        plot_history(run.out_dir / "history.jsonl", run.out_dir / "curves.png",
                     f"{c.searcher.name} ({c.estimator.name}) · {c.simulator.name} · {c.task.name}")
