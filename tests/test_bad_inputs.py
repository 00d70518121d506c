"""Bad input gives one line, never a traceback: a plugin that breaks its contract (in ``run``,
``generate`` and ``diagnose``, its traceback kept in a file the line names), damaged run files,
a full disk, an ``--out`` that cannot be made, a batch that cannot fit in memory."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from kill_harness import toml
from typer.testing import CliRunner

from autosim_core import hookimpl
from autosim_core.cli import app
from autosim_core.records import Example
from autosim_core.toy import ToySimulator, ToyTask


class ShortSimulator(ToySimulator):
    """Returns one example fewer than it was given scenes."""

    @hookimpl
    def render(self, scenes: list[dict[str, Any]]) -> list[Example]:
        return super().render(scenes)[:-1]


class BeyondTheClassesSimulator(ToySimulator):
    """Labels its examples with class 5 of its two classes."""

    @hookimpl
    def render(self, scenes: list[dict[str, Any]]) -> list[Example]:
        out = super().render(scenes)
        for example in out:
            example.label = 5
        return out


class ImageSimulator(ToySimulator):
    """The toy's points drawn as 1x4x4 images, each with one box of the example's class (or, with
    ``category``, of that unknown category)."""

    def __init__(self, category: str | None = None):
        self.category = category

    @hookimpl
    def render(self, scenes: list[dict[str, Any]]) -> list[Example]:
        out = []
        for example in super().render(scenes):
            image = torch.full((1, 4, 4), float(torch.sigmoid(example.image[0])))
            category = self.category or f"class{example.label}"
            out.append(Example(image=image, label=example.label, scene=example.scene,
                               objects=[{"category": category, "box": [0.0, 0.0, 2.0, 2.0]}]))
        return out


class FolderTask(ToyTask):
    """The toy task, reading a folder of points (points.json: [[x, y, label], ...])."""

    @hookimpl
    def load_dataset(self, path: str) -> list[Example]:
        rows = json.loads((Path(path) / "points.json").read_text())
        return [Example(image=torch.tensor([x, y]), label=int(label)) for x, y, label in rows]


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Extra plugins every registry the CLI loads gets (by name; replace entries to swap one)."""
    from autosim_core import diagnose as diagnose_module
    from autosim_core import plugins as plugins_module
    from autosim_core import run as run_module

    extra: dict[str, Any] = {"simulators": {"short": ShortSimulator(), "beyond": BeyondTheClassesSimulator()},
                             "tasks": {}}
    original = plugins_module.load_registry

    def load_registry(*args: Any, **kwargs: Any) -> Any:
        registry = original(*args, **kwargs)
        for kind, found in extra.items():
            registry.plugins.setdefault(kind, {}).update(found)
        return registry

    for module in (plugins_module, run_module, diagnose_module):
        monkeypatch.setattr(module, "load_registry", load_registry)
    return extra


def config_file(folder: Path, cache: Path, name: str = "toy", simulator: str = "toy-gaussians",
                **changes: Any) -> Path:
    data = json.loads(json.dumps(_TOY))
    data["cache_dir"] = str(cache)
    data["simulator"]["name"] = simulator
    for key, value in changes.items():
        data[key] = value
    path = folder / f"{name}.toml"
    path.write_text(toml(data))
    return path


_TOY = {"seed": 0, "simulator": {"name": "toy-gaussians", "start": "initial"}, "task": {"name": "toy-logistic"},
        "searcher": {"name": "autosimulate", "settings": {"scenes_per_iteration": 16, "lr": 0.1}},
        "training": {"epochs": 2, "batch_size": 16, "lr": 0.05}, "budget": {"iterations": 2},
        "validation": {"preset": "target", "count": 40, "seed": 1001}}


def invoke(*args: Any) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def traceback_file(line: str) -> Path:
    found = re.search(r"\(traceback in (.+)\)$", line)
    assert found, line
    path = Path(found.group(1))
    assert "Traceback (most recent call last)" in path.read_text()
    return path


# ------------------------------------------------------------------ a plugin breaking its contract ---
@pytest.mark.parametrize("simulator,message", [
    ("short", "RuntimeError: simulator 'short' returned 39 examples for 40 scenes"),
    ("beyond", "IndexError: Target 5 is out of bounds."),
])
def test_run_gives_one_line_for_a_broken_plugin(simulator: str, message: str, plugins: Any, tmp_path: Path,
                                                cache_dir: Path) -> None:
    out = tmp_path / "run"
    result = invoke("run", config_file(tmp_path, cache_dir, simulator=simulator), "--out", out)
    assert result.exit_code == 1
    (line,) = result.stderr.splitlines()[-1:]
    assert line == f"error: {message} (traceback in {out / 'error.log'})"
    assert "Traceback" not in result.output
    traceback_file(line)


def test_diagnose_gives_one_line_for_a_broken_plugin(plugins: Any, tmp_path: Path, cache_dir: Path) -> None:
    result = invoke("diagnose", config_file(tmp_path, cache_dir, simulator="short"), "--out", tmp_path / "d.json",
                    "--warmup", 0, "--draws", 2, "-k", 8, "--reference", 16)
    assert result.exit_code == 1
    line = result.stderr.splitlines()[-1]
    assert line.startswith("error: RuntimeError: simulator 'short' returned 39 examples for 40 scenes (traceback in ")
    assert "Traceback" not in result.output
    traceback_file(line).unlink()
    assert not (tmp_path / "d.json").exists()


@pytest.fixture
def toy_run(tmp_path: Path, cache_dir: Path) -> Path:
    """A finished two-iteration toy run."""
    out = tmp_path / "run"
    result = invoke("run", config_file(tmp_path, cache_dir), "--out", out)
    assert result.exit_code == 0, result.output
    return out


def test_generate_gives_one_line_for_a_broken_plugin_and_leaves_nothing_in_the_way(
        plugins: Any, toy_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "data"
    # The toy renders points, not images: said before anything is written.
    result = invoke("generate", toy_run, "-n", 5, "-o", out)
    assert result.exit_code == 2
    assert result.stderr == (f"error: {toy_run}: simulator 'toy-gaussians' renders no images (an example's image is "
                             "(2,), not (C, H, W)); generate writes image datasets\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "toy.toml"]
    # A renderer whose objects are of a category it does not declare fails mid-way ...
    plugins["simulators"]["toy-gaussians"] = ImageSimulator(category="dragon")
    result = invoke("generate", toy_run, "-n", 5, "-o", out, "--format", "coco", "--batch", 2)
    assert result.exit_code == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ValueError: example 0: object category 'dragon' is not one of ['class0', "
                           "'class1'] (traceback in ")
    traceback_file(line).unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "toy.toml"]
    # ... and the retry, once it is fixed, writes the dataset.
    plugins["simulators"]["toy-gaussians"] = ImageSimulator()
    result = invoke("generate", toy_run, "-n", 5, "-o", out, "--format", "coco", "--batch", 2)
    assert result.exit_code == 0, result.output
    annotations = json.loads((out / "annotations.json").read_text())
    assert len(annotations["images"]) == len(annotations["annotations"]) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "run", "toy.toml"]


# ----------------------------------------------------------------------------- damaged files ---
def test_damaged_run_files_are_named_in_one_line(toy_run: Path, tmp_path: Path, cache_dir: Path) -> None:
    config = config_file(tmp_path, cache_dir, budget={"iterations": 3})
    history = (toy_run / "history.jsonl").read_text()
    with open(toy_run / "history.jsonl", "a") as file:
        file.write("[1, 2]\n")
    result = invoke("run", config, "--out", toy_run, "--resume")
    assert result.exit_code == 2
    assert result.stderr == (f"error: {toy_run / 'history.jsonl'}: line 3 is JSON but not a row (an object with an "
                             "integer 'iteration'): [1, 2]; the history is damaged\n")
    (toy_run / "history.jsonl").write_text(history)
    checkpoint = toy_run / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:300])
    result = invoke("run", config, "--out", toy_run, "--resume")
    assert result.exit_code == 2
    assert result.stderr == (f"error: {checkpoint} cannot be read (truncated, or not a checkpoint: RuntimeError); "
                             f"the run cannot be continued: start it again in a new --out, or delete {toy_run}\n")


def test_a_truncated_cached_set_is_rendered_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = tmp_path / "cache"
    first = invoke("run", config_file(tmp_path, cache), "--out", tmp_path / "first")
    assert first.exit_code == 0, first.output
    (cached,) = cache.glob("*.pt")
    whole = cached.read_bytes()
    cached.write_bytes(whole[: len(whole) // 2])
    second = invoke("run", config_file(tmp_path, cache), "--out", tmp_path / "second")
    assert second.exit_code == 0, second.output
    assert any(m.startswith(f"the cached set {cached} cannot be read (") and m.endswith("; rendering it again")
               for m in caplog.messages), caplog.messages
    rows = [[{k: v for k, v in json.loads(line).items() if not k.startswith("seconds")}
             for line in (tmp_path / run / "history.jsonl").read_text().splitlines()] for run in ("first", "second")]
    assert rows[0] == rows[1]  # the same validation set, rendered again
    assert torch.load(cached, weights_only=True)["examples"]


def test_a_psi_json_that_is_not_a_runs_is_named_not_the_format(toy_run: Path, tmp_path: Path) -> None:
    for text, why in (("{}", "no 'space' and no 'psi' table (a finished run's psi.json has both)"),
                      ('{"spa', "not JSON (")):
        (toy_run / "psi.json").write_text(text)
        result = invoke("generate", toy_run, "-n", 2, "-o", tmp_path / "data", "--format", "coco")
        assert result.exit_code == 2
        assert result.stderr.startswith(f"error: {toy_run / 'psi.json'}: {why}"), result.stderr
        assert "--format" not in result.stderr


# ------------------------------------------------------------------------- disks and folders ---
def test_a_full_disk_stops_the_run_in_one_line_and_resume_finishes_it(tmp_path: Path, cache_dir: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from autosim_core import rundir

    config = config_file(tmp_path, cache_dir)
    out = tmp_path / "run"
    real = rundir.HistoryWriter.append

    def full(self: Any, row: dict[str, Any]) -> None:
        if row["iteration"] == 2:
            raise OSError(28, "No space left on device")
        real(self, row)

    monkeypatch.setattr(rundir.HistoryWriter, "append", full)
    result = invoke("run", config, "--out", out)
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == (f"error: cannot write {out}: No space left on device; the run stopped "
                                              "at its last checkpoint: make room (or fix the folder), then continue "
                                              "it with --resume")
    monkeypatch.setattr(rundir.HistoryWriter, "append", real)
    result = invoke("run", config, "--out", out, "--resume")
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["iteration"] for line in (out / "history.jsonl").read_text().splitlines()] == [1, 2]


def test_an_out_that_cannot_be_made_is_refused_before_the_work(toy_run: Path, tmp_path: Path, cache_dir: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from autosim_core import diagnose as diagnose_module

    def no_work(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the work started")

    monkeypatch.setattr(diagnose_module, "diagnose", no_work)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    config = config_file(tmp_path, cache_dir)
    for args, line in (
            (["run", config, "--out", blocker / "run"], f"error: --out: {blocker / 'run'} cannot be made: "
                                                        f"{blocker} is a file"),
            (["run", config, "--out", blocker], f"error: --out: {blocker} is a file"),
            (["generate", toy_run, "-n", 1, "-o", blocker / "data"], f"error: --out: {blocker / 'data'} cannot be "
                                                                    f"made: {blocker} is a file"),
            (["diagnose", config, "--out", blocker / "d.json"], f"error: --out: {blocker} is a file")):
        result = invoke(*args)
        assert result.exit_code == 2, result.output
        assert result.stderr == line + "\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_read_only_out_is_refused(tmp_path: Path, cache_dir: Path) -> None:
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        result = invoke("run", config_file(tmp_path, cache_dir), "--out", folder / "run")
    finally:
        folder.chmod(0o755)
    assert result.exit_code == 2
    assert result.stderr == f"error: --out: {folder / 'run'} cannot be made: {folder} is not writable\n"


def test_a_batch_larger_than_the_free_memory_is_refused_before_rendering(tmp_path: Path, cache_dir: Path) -> None:
    from autosim_core.scenes import free_memory

    free = free_memory()
    if free is None:
        pytest.skip("no MemAvailable on this system")
    # 2-float points: well over 8 bytes each, so this many cannot fit in the free memory.
    huge = free // 8 + 1
    config = config_file(tmp_path, cache_dir, validation=dict(_TOY["validation"], count=huge),
                         searcher={"name": "autosimulate", "settings": {"scenes_per_iteration": huge}})
    result = invoke("run", config, "--out", tmp_path / "run")
    assert result.exit_code == 2
    (line,) = result.stderr.splitlines()
    assert re.fullmatch(rf"error: validation.count = {huge} needs about [\d.]+ [KMGT]?i?B; "
                        rf"searcher.settings.scenes_per_iteration = {huge} needs about [\d.]+ [KMGT]?i?B of memory "
                        r"\([\d.]+ [KMGT]?i?B an example, twice: the examples and their batch\), but [\d.]+ [KMGT]?i?B "
                        r"is free; lower them", line), line
    assert not (tmp_path / "run" / "history.jsonl").exists()


# ------------------------------------------------------------------------------ other inputs ---
def test_compare_refuses_a_single_config(tmp_path: Path, cache_dir: Path) -> None:
    result = invoke("compare", config_file(tmp_path, cache_dir), "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert result.stderr == ("error: compare needs two or more configs (got 1); one config runs with autosim run, "
                             "over seeds with autosim compare A.toml B.toml --seeds N\n")
    assert not (tmp_path / "out").exists()


def test_generate_reads_the_resolved_folder_of_a_relative_validation_path(plugins: Any, tmp_path: Path,
                                                                          cache_dir: Path) -> None:
    plugins["tasks"]["toy-logistic"] = FolderTask()
    real = tmp_path / "configs" / "real"
    real.mkdir(parents=True)
    (real / "points.json").write_text(json.dumps([[3.0, 0.0, 1], [-1.0, 0.0, 0]] * 10))
    config = config_file(tmp_path / "configs", cache_dir, validation={"source": "folder", "path": "real"})
    run_dir = tmp_path / "runs" / "toy"
    result = invoke("run", config, "--out", run_dir)
    assert result.exit_code == 0, result.output
    assert json.loads((run_dir / "config.json").read_text())["validation"]["path"] == str(real)
    plugins["simulators"]["toy-gaussians"] = ImageSimulator()
    result = invoke("generate", run_dir, "-n", 3, "-o", tmp_path / "data")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "data" / "manifest.json").read_text())["examples"] == 3


def test_train_names_a_psi_json_that_is_not_a_runs(toy_run: Path) -> None:
    (toy_run / "psi.json").write_text("{}")
    result = invoke("train", toy_run)
    assert result.exit_code == 2
    assert result.stderr == (f"error: {toy_run / 'psi.json'}: no 'space' and no 'psi' table (a finished run's "
                             "psi.json has both)\n")
