"""Observers: progress on the console, plots of a run's curves and TensorBoard logs, as hook
implementations (``on_run_start``, ``on_phase``, ``on_render``, ``on_iteration``, ``on_run_end``).

Observers named in a config's ``[observers]`` table and those installed under the entry-point
group ``autosim.observers`` join every run (``configured_observers``).
"""

from __future__ import annotations

import atexit
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .hookspecs import hookimpl
from .rundir import atomic_write, read_rows

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure

    from .config import Observers
    from .plugins import Registry
    from .records import Example


class ConsoleProgress:
    """One line per iteration (images, seconds, validation loss and metric) and, on a terminal,
    a live rich progress display: the budget spent and the phase the run is in.

    The lines are what logs keep; the progress display is drawn only when the console writes
    to a terminal, so a redirected or piped run prints the lines alone.
    """

    def __init__(self, console: Any = None, prefix: str = "") -> None:
        from rich.console import Console

        self.console = console if console is not None else Console(stderr=True, highlight=False)
        self.prefix = prefix
        """Starts every line (``toy seed 1: ``): runs sharing a console tell theirs apart."""
        self.progress: Any = None
        self._budget: Any = None
        self._phases: list[str] = []

    def _budget_spent(self, run: Any) -> tuple[str, float | None, float]:
        """What the progress bar counts: the first limit of the budget that is set."""
        b = run.config.budget
        for key, limit, spent in (("iterations", b.iterations, run.iteration), ("images", b.images, run.images),
                                  ("seconds", b.seconds, run.elapsed)):
            if limit is not None:
                return key, float(limit), float(spent)
        return "iterations", None, float(run.iteration)

    @hookimpl
    def on_run_start(self, run: Any) -> None:
        c = run.config
        estimator = f" · estimator {c.estimator.name}" if run.uses_estimator else ""
        self.console.print(f"{self.prefix}[bold]autosim[/] {c.searcher.name} · simulator {c.simulator.name} · "
                           f"task {c.task.name}{estimator} → {run.out_dir}", soft_wrap=True)
        if not self.console.is_terminal:
            return
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 TextColumn("{task.fields[spent]}"), TimeElapsedColumn(),
                                 console=self.console, transient=True)
        unit, total, spent = self._budget_spent(run)
        self._budget = self.progress.add_task("run", total=total, completed=spent,
                                              spent=self._spent_text(unit, total, spent))
        self._phase_task = self.progress.add_task("phase: starting", total=None, spent="")
        self.progress.start()
        # A run that fails never reaches on_run_end: the terminal still gets its cursor back.
        atexit.register(self._stop)

    @staticmethod
    def _spent_text(unit: str, total: float | None, spent: float) -> str:
        if unit == "seconds":
            return f"{spent:.0f}/{total:.0f} s" if total else f"{spent:.0f} s"
        return f"{spent:.0f}/{total:.0f} {unit}" if total else f"{spent:.0f} {unit}"

    def _stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    @hookimpl
    def on_phase(self, phase: str, started: bool) -> None:
        if started:
            self._phases.append(phase)
        elif self._phases:
            self._phases.pop()
        if self.progress is not None:
            shown = " › ".join(self._phases) if self._phases else "bookkeeping"
            self.progress.update(self._phase_task, description=f"phase: {shown}")

    @hookimpl
    def on_iteration(self, run: Any, row: dict[str, Any]) -> None:
        val = ""
        if row.get("val_metric") is not None:
            val = f"  val loss {row['val_loss']:.4f}  metric {row['val_metric']:.4f}"
        self.console.print(f"{self.prefix}it {row['iteration']:4d}  images {row['images']:6d}  "
                           f"{row['seconds']:7.1f} s{val}")
        if row.get("warning"):
            self.console.print(f"warning: {row['warning']}", style="yellow", soft_wrap=True, markup=False)
        if self.progress is not None:
            unit, total, spent = self._budget_spent(run)
            self.progress.update(self._budget, completed=spent, spent=self._spent_text(unit, total, spent))

    @hookimpl
    def on_run_end(self, run: Any, summary: dict[str, Any]) -> None:
        self._stop()
        line = (f"{self.prefix}done: {summary['iterations']} iterations, {summary['images']} images, "
                f"{summary['seconds']:.1f} s")
        for key in ("val", "test"):
            if key in summary:
                line += f"  {key} metric {summary[key]['metric']:.4f}"
        self.console.print(line)
        split = summary["seconds_split"]
        self.console.print(f"{self.prefix}seconds: " + ", ".join(f"{phase} {split[phase]:.1f}" for phase in split)
                           + f" (evaluation sets {summary['seconds_setup']:.1f})", soft_wrap=True)
        learned = [name for name in summary["psi"] if run.space[name].learn]
        if learned and summary["psi"] != summary["psi_start"]:
            self.console.print(psi_table(summary, learned, title=self.prefix.removesuffix(": ") or None))


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


def psi_table(summary: dict[str, Any], names: list[str], title: str | None = None) -> Any:
    """Learned parameters: where they started, where they are, where the validation data are.

    Values are in the parameters' units: the mean (median for log-normals) and, in brackets,
    the 10-90 % range of the rendered values; categoricals show their probabilities.
    """
    from rich.table import Table

    target = summary.get("psi_validation")
    table = Table("parameter", "start", "learned", *(["validation data"] if target else []), box=None, title=title,
                  caption="mean or median [10 %, 90 % of rendered values]; categoricals: probabilities")
    for name in names:
        row = [name, _readable(summary["psi_start"][name]), _readable(summary["psi"][name])]
        if target:
            row.append(_readable(target[name]))
        table.add_row(*row)
    return table


def _centre(value: dict[str, Any]) -> float:
    return float(value["mean"] if "mean" in value else value["median"])


def _plot_psi(ax: Any, name: str, xs: list[float], values: list[dict[str, Any]],
              target: dict[str, Any] | None) -> None:
    """One parameter's trajectory in its own units; the validation data's value as a dashed line."""
    first = values[0]
    if "probs" in first:
        for k, choice in enumerate(first["probs"]):
            colour = f"C{k % 10}"
            ax.plot(xs, [v["probs"][choice] for v in values], color=colour, label=str(choice))
            if target is not None and choice in target.get("probs", {}):
                ax.axhline(target["probs"][choice], color=colour, linestyle="--", linewidth=1)
        ax.set_ylabel("probability")
        ax.set_ylim(0, 1)
        ax.legend(fontsize="x-small", loc="best")
    elif "p" in first:
        ax.plot(xs, [v["p"] for v in values], color="C0")
        if target is not None:
            ax.axhline(target["p"], color="C3", linestyle="--", linewidth=1, label="validation data")
        ax.set_ylabel("p(True)")
        ax.set_ylim(0, 1)
    else:
        ax.plot(xs, [_centre(v) for v in values], color="C0", label="mean" if "mean" in first else "median")
        if "p10" in first and "p90" in first:
            ax.fill_between(xs, [v["p10"] for v in values], [v["p90"] for v in values], color="C0", alpha=0.2,
                            label="10-90 %")
        if target is not None:
            ax.axhline(_centre(target), color="C3", linestyle="--", linewidth=1, label="validation data")
        ax.set_ylabel("mean" if "mean" in first else "median")
        ax.legend(fontsize="x-small", loc="best")
    ax.set_title(name, fontsize="small")
    ax.set_xlabel("images generated")
    ax.grid(alpha=0.3)


def curves_figure(rows: list[dict[str, Any]], names: list[str] | None = None,
                  target: dict[str, Any] | None = None, title: str = "") -> Figure | None:
    """A run's curves: the validation metric against images and against seconds, then one panel
    per parameter of ``names`` (default: those whose psi moved) with its trajectory in the
    parameter's units, the values ``psi_table`` shows (mean or median and the 10-90 % range of
    the rendered values; categoricals as probabilities) and, where ``target`` (a described psi
    of the validation data) has it, that value as a dashed horizontal line.

    The figure is built without pyplot; None when there is nothing to draw."""
    from matplotlib.figure import Figure

    scored = [r for r in rows if r.get("val_metric") is not None]
    with_psi = [r for r in rows if isinstance(r.get("psi"), dict)]
    if names is None:
        names = [n for n in (with_psi[0]["psi"] if with_psi else {})
                 if any(r["psi"].get(n) != with_psi[0]["psi"][n] for r in with_psi)]
    names = [n for n in names if with_psi and all(n in r["psi"] for r in with_psi)]
    if not scored and not names:
        return None
    columns = 2 if not names else max(2, min(3, len(names)))
    psi_rows = math.ceil(len(names) / columns)
    fig = Figure(figsize=(4.2 * columns, 3.2 * ((1 if scored else 0) + psi_rows)), layout="constrained")
    grid = fig.add_gridspec((1 if scored else 0) + psi_rows, columns)
    if scored:
        metric = [r["val_metric"] for r in scored]
        first = None
        for col, (key, label) in enumerate((("images", "images generated"), ("seconds", "seconds"))):
            ax = fig.add_subplot(grid[0, col], sharey=first)
            first = first or ax
            ax.plot([r[key] for r in scored], metric, marker=".")
            ax.set_xlabel(label)
            ax.set_ylabel("validation metric")
            ax.grid(alpha=0.3)
    xs = [float(r["images"]) for r in with_psi]
    for i, name in enumerate(names):
        ax = fig.add_subplot(grid[(1 if scored else 0) + i // columns, i % columns])
        ax.set_label(f"psi:{name}")
        _plot_psi(ax, name, xs, [r["psi"][name] for r in with_psi], (target or {}).get(name))
    if title:
        fig.suptitle(title)
    return fig


read_history = read_rows


def plot_history(history_path: str | Path, out_path: str | Path, title: str = "", names: list[str] | None = None,
                 target: dict[str, Any] | None = None) -> Path | None:
    """``curves_figure`` of a history.jsonl, written as a PNG; None when there is nothing to draw."""
    fig = curves_figure(read_history(history_path), names, target, title)
    if fig is None:
        return None
    atomic_write(Path(out_path), lambda f: fig.savefig(f, format="png", dpi=110))
    return Path(out_path)


class PlotCurves:
    """Writes ``curves.png`` into the run folder when the run ends: the validation metric and
    the trajectories of the learned parameters against the validation data's values."""

    @hookimpl
    def on_run_end(self, run: Any, summary: dict[str, Any]) -> None:
        c = run.config
        learned = [name for name in summary["psi"] if run.space[name].learn]
        plot_history(run.out_dir / "history.jsonl", run.out_dir / "curves.png",
                     f"{c.searcher.name} ({c.estimator.name}) · {c.simulator.name} · {c.task.name}",
                     names=learned, target=summary.get("psi_validation"))


# ------------------------------------------------------------------------------ TensorBoard ---
def annotated_image(example: Example, alpha: float = 0.45) -> torch.Tensor | None:
    """An example's image as uint8 RGB (3, H, W) with its mask drawn as a colour overlay (one
    colour per class id, background untouched) and its objects' boxes as rectangles; None for
    examples whose ``image`` is not an image (C, H, W) with C = 1 or 3."""
    import torch
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    image = example.image
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] not in (1, 3):
        return None
    rgb = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    if rgb.shape[0] == 1:
        rgb = rgb.expand(3, -1, -1).contiguous()
    if example.mask is not None:
        mask = example.mask.detach().cpu()
        ids = [int(i) for i in mask.unique() if int(i) > 0]
        if ids:
            rgb = draw_segmentation_masks(rgb, torch.stack([mask == i for i in ids]), alpha=alpha,
                                          colors=[PALETTE[i % len(PALETTE)] for i in ids])
    boxed = [o for o in example.objects if isinstance(o, dict) and o.get("box") is not None]
    if boxed:
        boxes = torch.tensor([[float(v) for v in o["box"]] for o in boxed])
        labels = [str(o.get("category", "")) for o in boxed]
        rgb = draw_bounding_boxes(rgb, boxes, labels=labels if any(labels) else None, colors="yellow", width=1)
    return rgb


PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]
"""Overlay colours of class ids 1, 2, ... (cycled)."""


def render_grid(examples: list[Example], limit: int = 16) -> torch.Tensor | None:
    """The first ``limit`` examples annotated (``annotated_image``) in one uint8 image grid, or
    None when they hold no images."""
    from torchvision.utils import make_grid

    images = [im for im in (annotated_image(e) for e in examples[:limit]) if im is not None]
    if not images or any(im.shape != images[0].shape for im in images):
        return None
    return make_grid(images, nrow=math.ceil(math.sqrt(len(images))), padding=2)


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The numbers of a history row TensorBoard shows, by tag: validation and training loss,
    the metric, seconds per phase, the hypergradient's norm and psi's coordinates in the
    parameters' units."""
    out: dict[str, float] = {}
    for key, tag in (("val_metric", "val/metric"), ("val_loss", "val/loss"), ("train_loss", "train/loss"),
                     ("images", "run/images"), ("seconds", "run/seconds")):
        if isinstance(row.get(key), int | float):
            out[tag] = float(row[key])
    for key, value in row.items():
        if key.startswith("seconds_") and isinstance(value, int | float):
            out[f"seconds/{key.removeprefix('seconds_')}"] = float(value)
    estimator = row.get("estimator")
    if isinstance(estimator, dict) and isinstance(estimator.get("grad_norm"), int | float):
        out["hypergrad/norm"] = float(estimator["grad_norm"])
    for name, value in (row.get("psi") or {}).items():
        if not isinstance(value, dict):
            continue
        for key, number in value.items():
            if key == "probs":
                out.update({f"psi/{name}/p({choice})": float(p) for choice, p in number.items()})
            elif isinstance(number, int | float):
                out[f"psi/{name}/{key}"] = float(number)
    return out


class TensorBoardObserver:
    """Logs each iteration to ``RUN/tensorboard`` (or ``log_dir``): ``scalars`` of its history
    row at step = iteration, and a grid of the iteration's first renders with their masks and
    boxes. Needs the ``tensorboard`` package (``pip install 'autosim-core[tensorboard]'``)."""

    def __init__(self, log_dir: str | Path | None = None, images: int = 16) -> None:
        self.log_dir = log_dir
        self.images = images
        self.writer: Any = None
        self._grid: torch.Tensor | None = None

    @hookimpl
    def on_run_start(self, run: Any) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.log_dir or Path(run.out_dir) / "tensorboard"))

    @hookimpl
    def on_render(self, examples: list[Example]) -> None:
        # Only the small grid outlives this call; the examples are the run's to drop.
        if self.images > 0:
            self._grid = render_grid(examples, self.images)

    @hookimpl
    def on_iteration(self, row: dict[str, Any]) -> None:
        if self.writer is None:
            return
        step = int(row["iteration"])
        for tag, value in scalars(row).items():
            self.writer.add_scalar(tag, value, step)
        if self._grid is not None:
            self.writer.add_image("renders", self._grid, step)
            self._grid = None
        self.writer.flush()

    @hookimpl
    def on_run_end(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def configured_observers(settings: Observers, registry: Registry, errors: list[str]) -> list[Any]:
    """The observers a config's ``[observers]`` table asks for and one instance of every
    plugin installed under ``autosim.observers`` (a class or factory called without
    arguments). Problems are appended to ``errors`` as config lines."""
    found: list[Any] = []
    if settings.tensorboard:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            errors.append("observers.tensorboard: needs the tensorboard package "
                          "(pip install 'autosim-core[tensorboard]')")
        else:
            found.append(TensorBoardObserver())
    for name, factory in sorted(registry.plugins.get("observers", {}).items()):
        try:
            found.append(factory() if callable(factory) else factory)
        except Exception as exc:
            errors.append(f"observers: observer plugin {name!r} failed to start: {type(exc).__name__}: {exc}")
    for failure in registry.failures:
        if failure.group == "observers":
            errors.append(f"observers: observer plugin {failure.name!r} failed to load: {failure.reason}")
    return found
