"""Observers: console progress, the curves figure with psi trajectories, TensorBoard logs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from rich.console import Console

from autosim_core import hookimpl
from autosim_core.config import parse_config
from autosim_core.observers import (
    PALETTE,
    ConsoleProgress,
    PlotCurves,
    TensorBoardObserver,
    annotated_image,
    curves_figure,
    plot_history,
    render_grid,
    scalars,
)
from autosim_core.plugins import load_registry
from autosim_core.records import Example
from autosim_core.run import Run
from autosim_core.rundir import HISTORY


def history(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / HISTORY).read_text().splitlines() if line.strip()]


def run_toy(folder: Path, cache_dir: Path, make_toy_data, observers: tuple = (), iterations: int = 3,
            observers_config: dict | None = None) -> dict:
    data = make_toy_data(cache_dir, iterations=iterations, val_count=100)
    if observers_config is not None:
        data["observers"] = observers_config
    return Run(parse_config(data), folder, observers=observers).execute()


@pytest.mark.parametrize("terminal", [False, True])
def test_progress_only_on_a_terminal(tmp_path, cache_dir, make_toy_data, terminal):
    stream = io.StringIO()
    console = Console(file=stream, force_terminal=terminal, width=120, highlight=False)
    run_toy(tmp_path / "run", cache_dir, make_toy_data, (ConsoleProgress(console),))
    text = stream.getvalue()
    # The per-iteration lines are there either way, for logs.
    for iteration in (1, 2, 3):
        assert f"it    {iteration}  images" in text
    assert ("phase: " in text) is terminal
    assert ("iterations" in text.replace("3 iterations,", "")) is terminal  # the budget bar's "k/3 iterations"


def test_curves_figure_has_one_psi_panel_per_parameter(tmp_path, cache_dir, make_toy_data):
    summary = run_toy(tmp_path / "run", cache_dir, make_toy_data, (PlotCurves(),))
    rows = history(tmp_path / "run")
    assert (tmp_path / "run" / "curves.png").stat().st_size > 0
    learned = [name for name in summary["psi"] if summary["psi"][name] != summary["psi_start"][name]]
    assert learned
    target = summary["psi_validation"]
    fig = curves_figure(rows, learned, target)
    panels = {ax.get_label().removeprefix("psi:"): ax for ax in fig.axes if ax.get_label().startswith("psi:")}
    assert sorted(panels) == sorted(learned)
    for name, ax in panels.items():
        centre_key = "mean" if "mean" in rows[0]["psi"][name] else "median"
        trajectory, validation = ax.lines[0], ax.lines[-1]
        assert list(trajectory.get_xdata()) == [r["images"] for r in rows]
        assert list(trajectory.get_ydata()) == pytest.approx([r["psi"][name][centre_key] for r in rows])
        # the dashed line: the validation preset's value, constant over the axis
        assert validation.get_linestyle() == "--"
        assert list(validation.get_ydata()) == pytest.approx([target[name][centre_key]] * 2)
    # the metric panels: metric against images
    metric_ax = next(ax for ax in fig.axes if ax.get_xlabel() == "images generated" and ax.get_ylabel()
                     == "validation metric")
    assert list(metric_ax.lines[0].get_ydata()) == pytest.approx([r["val_metric"] for r in rows])


def test_curves_figure_categoricals_as_probabilities():
    rows = [{"images": 10 * i, "psi": {"shape": {"probs": {"cube": 0.5 - 0.1 * i, "ball": 0.5 + 0.1 * i}}}}
            for i in range(3)]
    target = {"shape": {"probs": {"cube": 0.2, "ball": 0.8}}}
    fig = curves_figure(rows, ["shape"], target)
    (ax,) = [ax for ax in fig.axes if ax.get_label() == "psi:shape"]
    solid = [line for line in ax.lines if line.get_linestyle() == "-"]
    dashed = [line for line in ax.lines if line.get_linestyle() == "--"]
    assert [list(line.get_ydata()) for line in solid] == [pytest.approx([0.5, 0.4, 0.3]),
                                                          pytest.approx([0.5, 0.6, 0.7])]
    assert [set(line.get_ydata()) for line in dashed] == [{0.2}, {0.8}]
    assert ax.get_ylim() == (0, 1)


def test_annotated_image_draws_mask_and_box():
    image = torch.zeros(3, 20, 30)
    mask = torch.zeros(20, 30, dtype=torch.long)
    mask[2:6, 2:6] = 2
    example = Example(image=image, mask=mask, objects=[{"category": "cube", "box": [10, 8, 25, 18]}])
    drawn = annotated_image(example, alpha=1.0)
    assert drawn.dtype == torch.uint8 and drawn.shape == (3, 20, 30)
    # class 2's colour fills its mask; background pixels outside mask and box stay black
    assert drawn[:, 3, 3].tolist() == list(PALETTE[2])
    assert drawn[:, 0, 0].tolist() == [0, 0, 0]
    # the box's outline is yellow, its inside untouched
    assert drawn[:, 8, 15].tolist() == [255, 255, 0]
    assert drawn[:, 18, 10].tolist() == [255, 255, 0]
    assert drawn[:, 13, 17].tolist() == [0, 0, 0]
    grid = render_grid([example] * 4)
    assert grid.shape == (3, 2 * 20 + 3 * 2, 2 * 30 + 3 * 2)
    assert render_grid([Example(image=torch.zeros(2))]) is None  # not an image


def test_tensorboard_scalars_equal_history(tmp_path, cache_dir, make_toy_data):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = tmp_path / "run"
    run_toy(folder, cache_dir, make_toy_data, iterations=3, observers_config={"tensorboard": True})
    rows = history(folder)
    events = EventAccumulator(str(folder / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    expected = {tag for row in rows for tag in scalars(row)}
    assert {"val/metric", "val/loss", "hypergrad/norm", "seconds/render", "psi/x1/mean"} <= expected
    assert tags == expected
    for tag, row_key in (("val/metric", lambda r: r["val_metric"]), ("val/loss", lambda r: r["val_loss"]),
                         ("hypergrad/norm", lambda r: r["estimator"]["grad_norm"]),
                         ("seconds/train", lambda r: r["seconds_train"]),
                         ("psi/x1/mean", lambda r: r["psi"]["x1"]["mean"])):
        logged = events.Scalars(tag)
        assert [e.step for e in logged] == [r["iteration"] for r in rows]
        assert [e.value for e in logged] == pytest.approx([row_key(r) for r in rows], rel=1e-6)


def test_tensorboard_logs_the_render_grid(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    observer = TensorBoardObserver(log_dir=tmp_path / "tb", images=4)

    class FakeRun:
        out_dir = tmp_path

    observer.on_run_start(FakeRun())
    mask = torch.zeros(8, 8, dtype=torch.long)
    mask[:4] = 1
    observer.on_render([Example(image=torch.full((3, 8, 8), 0.5), mask=mask)] * 4)
    observer.on_iteration({"iteration": 1, "val_metric": 0.5})
    observer.on_run_end()
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    events.Reload()
    (image,) = events.Images("renders")
    assert image.step == 1 and (image.width, image.height) == (2 * 8 + 3 * 2, 2 * 8 + 3 * 2)


def test_tensorboard_without_the_package_is_a_config_error(monkeypatch, cache_dir, make_toy_data, tmp_path):
    import sys

    from autosim_core.config import ConfigError

    monkeypatch.setitem(sys.modules, "tensorboard", None)
    data = make_toy_data(cache_dir, iterations=1)
    data["observers"] = {"tensorboard": True}
    with pytest.raises(ConfigError, match=r"observers.tensorboard: needs the tensorboard package"):
        Run(parse_config(data), tmp_path / "run")


class PhaseRecorder:
    """An installed observer (entry-point group autosim.observers) that records the hooks it gets."""

    def __init__(self) -> None:
        self.events: list[tuple[str, bool]] = []
        self.rendered: list[int] = []
        self.iterations: list[int] = []

    @hookimpl
    def on_phase(self, phase: str, started: bool) -> None:
        self.events.append((phase, started))

    @hookimpl
    def on_render(self, examples: list) -> None:
        self.rendered.append(len(examples))

    @hookimpl
    def on_iteration(self, row: dict) -> None:
        self.iterations.append(row["iteration"])


def test_installed_observers_join_every_run(tmp_path, cache_dir, make_toy_data):
    made: list[PhaseRecorder] = []

    def factory() -> PhaseRecorder:
        made.append(PhaseRecorder())
        return made[-1]

    registry = load_registry()
    registry.plugins["observers"]["recorder"] = factory
    data = make_toy_data(cache_dir, iterations=2, val_count=100)
    Run(parse_config(data), tmp_path / "run", registry=registry).execute()
    (recorder,) = made
    assert recorder.iterations == [1, 2]
    scenes = data["searcher"]["settings"]["scenes_per_iteration"]
    assert recorder.rendered == [scenes, scenes]
    # every phase that starts ends, innermost first, and the four phases all occur
    stack = []
    for phase, started in recorder.events:
        if started:
            stack.append(phase)
        else:
            assert stack.pop() == phase
    assert not stack
    assert {phase for phase, _ in recorder.events} == {"render", "train", "hypergrad", "eval"}


def test_an_observer_that_fails_to_start_is_a_config_error(tmp_path, cache_dir, make_toy_data):
    from autosim_core.config import ConfigError

    def broken() -> None:
        raise RuntimeError("no display")

    registry = load_registry()
    registry.plugins["observers"]["broken"] = broken
    with pytest.raises(ConfigError, match=r"observers: observer plugin 'broken' failed to start: RuntimeError"):
        Run(parse_config(make_toy_data(cache_dir, iterations=1)), tmp_path / "run", registry=registry)


def test_curves_png_is_written_whole_or_not_at_all(tmp_path, full_disk):
    rows = [{"iteration": i, "images": 64 * i, "seconds": 0.1 * i, "val_metric": 0.5 + 0.1 * i,
             "psi": {"x1": {"mean": 0.2 * i, "p10": 0.2 * i - 1, "p90": 0.2 * i + 1}}} for i in (1, 2, 3)]
    (tmp_path / HISTORY).write_text("".join(json.dumps(r) + "\n" for r in rows))
    curves = tmp_path / "curves.png"
    assert plot_history(tmp_path / HISTORY, curves) == curves
    before = curves.read_bytes()
    assert before.startswith(b"\x89PNG")
    full_disk(figures=True)
    with pytest.raises(OSError, match="No space left"):
        plot_history(tmp_path / HISTORY, curves)
    assert curves.read_bytes() == before  # the last whole figure, not half a new one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", HISTORY]
