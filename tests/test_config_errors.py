"""Malformed configs: each fails before any work starts with one clear line naming its key path."""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from autosim_core import hookimpl
from autosim_core.cli import app
from autosim_core.config import ConfigError, load_config, parse_config
from autosim_core.run import Run, open_run

Mutation = Callable[[dict[str, Any]], Any]


def setting(table: str, key: str, value: Any) -> Mutation:
    return lambda d: d[table].__setitem__(key, value)


def plugin_setting(table: str, key: str, value: Any) -> Mutation:
    return lambda d: d[table].setdefault("settings", {}).__setitem__(key, value)


def drop(*keys: str) -> Mutation:
    return lambda d: [d.pop(k) for k in keys]


# (id, change to examples/toy.toml, key path the line starts with, words the line must contain)
CASES: list[tuple[str, Mutation, str, list[str]]] = [
    ("wrong-type", setting("training", "epochs", "five"), "training.epochs", ["integer", "'five'"]),
    # pydantic alone takes true as 1 and inf as a float
    ("boolean-for-a-number", setting("training", "epochs", True), "training.epochs", ["number", "boolean", "True"]),
    ("infinite-lr", setting("training", "lr", math.inf), "training.lr", ["finite", "inf"]),
    ("plugin-boolean-for-a-number", plugin_setting("searcher", "scenes_per_iteration", True),
     "searcher.settings.scenes_per_iteration", ["number", "boolean", "True"]),
    ("plugin-nan", plugin_setting("searcher", "lr", math.nan), "searcher.settings.lr", ["finite", "nan"]),
    ("wrong-type-table", lambda d: d.__setitem__("budget", 10), "budget", ["dictionary", "10"]),
    ("negative-lr", setting("training", "lr", -1), "training.lr", ["greater than 0", "-1"]),
    ("negative-count", setting("validation", "count", -3), "validation.count", ["greater than or equal to 1"]),
    ("negative-seed", lambda d: d.__setitem__("seed", -1), "seed", ["greater than or equal to 0"]),
    ("zero-budget", lambda d: d.__setitem__("budget", {"iterations": 0}), "budget.iterations", ["1"]),
    ("not-allowed-value", setting("training", "optimizer", "rmsprop"), "training.optimizer",
     ["'adam'", "'sgd'", "'rmsprop'"]),
    ("unknown-top-level", lambda d: d.__setitem__("sed", 1), "sed", ["unknown key"]),
    ("unknown-nested", setting("training", "epoch", 3), "training.epoch", ["unknown key"]),
    ("unknown-estimator-setting", plugin_setting("estimator", "dampin", 0.1), "estimator.settings.dampin",
     ["unknown key"]),
    ("bad-estimator-setting", plugin_setting("estimator", "damping", -1), "estimator.settings.damping",
     ["greater than or equal to 0", "-1"]),
    ("bad-searcher-setting", plugin_setting("searcher", "scenes_per_iteration", 1),
     "searcher.settings.scenes_per_iteration", ["greater than or equal to 2"]),
    ("unknown-searcher-setting", plugin_setting("searcher", "lrate", 1), "searcher.settings.lrate", ["unknown key"]),
    ("pathwise-without-gradients", plugin_setting("searcher", "pathwise", True), "searcher.settings.pathwise",
     ["'toy-gaussians'", "render_differentiable", "pathwise = false"]),
    ("bad-task-setting", plugin_setting("task", "hidden", -4), "task.settings.hidden", ["greater than or equal to 0"]),
    ("unknown-simulator-setting", plugin_setting("simulator", "blur", 1), "simulator.settings.blur",
     ["unknown key"]),
    ("unknown-simulator", setting("simulator", "name", "nope"), "simulator.name", ["'nope'", "toy-gaussians"]),
    ("unknown-task", setting("task", "name", "nope"), "task.name", ["'nope'", "toy-logistic"]),
    ("unknown-estimator", setting("estimator", "name", "quadratik"), "estimator.name",
     ["'quadratik'", "approx-quadratic", "linear", "no-val", "quadratic"]),
    ("unknown-searcher", setting("searcher", "name", "grid"), "searcher.name", ["'grid'", "autosimulate"]),
    ("unknown-start-preset", setting("simulator", "start", "nope"), "simulator.start",
     ["'nope'", "'target'", "'initial'"]),
    ("unknown-validation-preset", setting("validation", "preset", "tagret"), "validation.preset",
     ["'tagret'", "'target'"]),
    ("missing-budget", drop("budget"), "budget", ["missing"]),
    ("empty-budget", lambda d: d.__setitem__("budget", {}), "budget", ["iterations", "images", "seconds"]),
    ("missing-task", drop("task"), "task", ["missing"]),
    ("validation-needed", drop("validation"), "validation", ["'quadratic'", "no-val"]),
    ("folder-without-path", setting("validation", "source", "folder"), "validation", ["folder", "path"]),
    ("folder-unsupported", lambda d: d["validation"].update(source="folder", path="/"), "validation.source",
     ["load_dataset", "'simulator'"]),
    ("unknown-override-parameter", setting("simulator", "overrides", {"z1": {"mean": 1.0}}), "simulator.overrides",
     ["'z1'", "x1", "y1"]),
    ("unknown-override-key", setting("simulator", "overrides", {"x1": {"meen": 1.0}}),
     "simulator.overrides.x1.meen", ["unknown key", "mean"]),
    ("bad-override-value", setting("validation", "overrides", {"x1": {"std": -1}}), "validation.overrides.x1.std",
     ["greater than 0"]),
    ("override-not-a-table", setting("simulator", "overrides", {"x1": 3}), "simulator.overrides.x1",
     ["dictionary"]),
    ("unknown-executor", lambda d: d.__setitem__("executor", {"kind": "threads"}), "executor.kind", ["'threads'"]),
    ("address-without-ray", lambda d: d.__setitem__("executor", {"kind": "processes", "address": "auto"}),
     "executor", ["address", "ray"]),
    ("zero-max-nonfinite", lambda d: d.__setitem__("max_nonfinite", 0), "max_nonfinite",
     ["greater than or equal to 1"]),
    ("final-fraction-out-of-range", lambda d: d.__setitem__("final_training", {"at": [0.5, 1.5]}),
     "final_training", ["[0, 1]", "1.5"]),
    ("final-seed-is-validation-seed", lambda d: d.__setitem__("final_training", {"seed": 1001}),
     "final_training.seed", ["1001", "validation.seed"]),
    ("unknown-observer", lambda d: d.__setitem__("observers", {"tensorbord": True}), "observers.tensorbord",
     ["unknown key"]),
]


def check(data: dict[str, Any]) -> None:
    """Everything a run checks before it starts work."""
    Run(parse_config(data), "/nonexistent/never-created")


@pytest.mark.parametrize("mutate,path,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_config_gives_one_clear_line(mutate: Mutation, path: str, words: list[str],
                                               toy_example: dict[str, Any], cache_dir: Path) -> None:
    data = copy.deepcopy(toy_example)
    data["cache_dir"] = str(cache_dir)
    mutate(data)
    with pytest.raises(ConfigError) as info:
        check(data)
    lines = info.value.lines
    assert len(lines) == 1, lines
    line = lines[0]
    assert "\n" not in line
    assert line.startswith(f"{path}:"), line
    for word in words:
        assert word in line, f"{word!r} not in {line!r}"
    assert str(info.value) == line


def test_every_table_of_a_run_config_has_a_malformed_case() -> None:
    """A table added to RunConfig without a case above would have its errors untested."""
    from autosim_core.config import RunConfig

    covered = {path.split(".")[0] for _, _, path, _ in CASES}
    # cache_dir takes any path; test is the validation table's model, whose cases cover it.
    untested = set(RunConfig.model_fields) - covered - {"cache_dir", "test"}
    assert not untested, f"no malformed-config case for: {sorted(untested)}"


@pytest.mark.parametrize("change,other", [
    ({"test": {"seed": 1001}}, "validation.seed"),
    ({"test": {"seed": 0}}, "seed"),
    ({"validation": {"seed": 0}}, "seed"),
])
def test_equal_seeds_are_rejected(change: dict[str, Any], other: str, toy_example: dict[str, Any]) -> None:
    data = copy.deepcopy(toy_example)
    for table, values in change.items():
        data[table].update(values)
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    (line,) = info.value.lines
    key = f"{next(iter(change))}.seed"
    assert line.startswith(f"{key}: "), line
    assert re.search(rf"^{re.escape(key)}: \d+ equals {re.escape(other)}\b", line), line


def test_equal_seeds_are_reported_with_every_other_problem_in_one_pass(toy_example: dict[str, Any],
                                                                       tmp_path: Path) -> None:
    """A check across keys runs on the config as far as it is valid, so it neither hides the
    other errors nor waits for them to be fixed; ``autosim diagnose`` reports the same lines."""
    from typer.testing import CliRunner

    from autosim_core.cli import app

    config = tmp_path / "eight.toml"
    config.write_text('seed = 7\nepochs = 3\n[simulator]\nname = "toy-gaussians"\nstart = "nope"\n'
                      '[task]\nname = "toy-logistic"\nsettings = { hidden = -1 }\n'
                      '[searcher]\nsettings = { scenes_per_iteration = true, lr = inf }\n'
                      '[training]\nepochs = true\nlr = 0\n[budget]\niterations = 2\n'
                      '[validation]\npreset = "target"\nseed = 7\n[test]\npreset = "nowhere"\nseed = 7\n')
    keys = ["epochs", "searcher.settings.lr", "searcher.settings.scenes_per_iteration", "simulator.start",
            "task.settings.hidden", "test.preset", "test.seed", "test.seed", "training.epochs", "training.lr",
            "validation.seed"]
    outputs = {}
    for command in ("run", "diagnose"):
        result = CliRunner().invoke(app, [command, str(config), "--out", str(tmp_path / command)])
        assert result.exit_code == 2, result.output
        lines = result.stderr.splitlines()
        assert all(line.startswith(f"error: {config}: ") and str(config) not in line.split(": ", 2)[2]
                   for line in lines), lines  # the path once
        assert sorted(line.split(": ")[2] for line in lines) == keys, lines
        outputs[command] = lines
    assert outputs["run"] == outputs["diagnose"]
    assert f"error: {config}: validation.seed: 7 equals seed; evaluation sets must not share the training seed or " \
           "each other's" in outputs["run"]


def test_several_problems_are_reported_together(toy_example: dict[str, Any]) -> None:
    data = copy.deepcopy(toy_example)
    data["training"].update(lr=0, epochs=0)
    data["extra"] = True
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    paths = sorted(line.split(":")[0] for line in info.value.lines)
    assert paths == ["extra", "training.epochs", "training.lr"]
    data = copy.deepcopy(toy_example)
    data["estimator"]["settings"] = {"dampin": 1}
    data["searcher"]["settings"] = {"lr": -1}
    with pytest.raises(ConfigError) as info:
        check(data)
    paths = sorted(line.split(":")[0] for line in info.value.lines)
    assert paths == ["estimator.settings.dampin", "searcher.settings.lr"]


def test_no_val_runs_without_validation(toy_example: dict[str, Any]) -> None:
    data = copy.deepcopy(toy_example)
    data["estimator"] = {"name": "no-val"}
    data.pop("validation")
    run = Run(parse_config(data), "/nonexistent/never-created")
    assert not run.needs_validation


def test_settings_of_one_estimator_are_unknown_to_another(toy_example: dict[str, Any]) -> None:
    data = copy.deepcopy(toy_example)
    data["estimator"]["name"] = "linear"  # keeps quadratic's damping and max_iter
    with pytest.raises(ConfigError) as info:
        check(data)
    assert sorted(info.value.lines) == ["estimator.settings.damping: unknown key",
                                        "estimator.settings.max_iter: unknown key"]


def test_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('seed = 0\n[simulator\nname = "toy-gaussians"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (line,) = info.value.lines
    assert line.startswith(f"{path}: not valid TOML")
    assert "line 2" in line


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.toml")
    (line,) = info.value.lines
    assert "absent.toml" in line and "cannot read" in line


def test_load_config_prefixes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[simulator]\nname = "toy-gaussians"\n[task]\nname = "toy-logistic"\n[budget]\niterations = -2\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.lines == [f"{path}: budget.iterations: Input should be greater than or equal to 1 (got -2)"]


def test_folder_paths_are_resolved_against_the_config(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    path = tmp_path / "c.toml"
    path.write_text('[simulator]\nname = "toy-gaussians"\n[task]\nname = "toy-logistic"\n[budget]\niterations = 1\n'
                    '[validation]\nsource = "folder"\npath = "real"\nseed = 5\n')
    config = load_config(path)
    assert config.validation is not None and config.validation.path == (tmp_path / "real").resolve()


# ------------------------------------------------------------------------------ CLI ---
CLI_CASES = [
    ("budget = 3\n", ["budget"]),
    ("[training]\nlr = -1\nepochs = 'x'\n", ["training.lr", "training.epochs"]),
    ("[estimator]\nname = 'quadratic'\nsettings = { dampin = 0.1 }\n", ["estimator.settings.dampin"]),
    ("[simulator.overrides]\nz1 = { mean = 1.0 }\n", ["simulator.overrides"]),
    ("[simulator.overrides]\nx1 = { meen = 1.0 }\n", ["simulator.overrides"]),
]
BASE = ('seed = 0\n[simulator]\nname = "toy-gaussians"\n[task]\nname = "toy-logistic"\n'
        '[validation]\nseed = 1\ncount = 10\n')


@pytest.mark.parametrize("extra,paths", CLI_CASES, ids=[f"case{i}" for i in range(len(CLI_CASES))])
def test_cli_reports_each_problem_on_one_line(extra: str, paths: list[str], tmp_path: Path) -> None:
    text = BASE + ("[budget]\niterations = 1\n" if "budget" not in extra else "") + extra
    if extra.startswith("budget"):
        text = extra + BASE
    config = tmp_path / "bad.toml"
    config.write_text(text)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.splitlines()
    assert len(lines) == len(paths), lines
    for line in lines:
        assert line.startswith(f"error: {config}: "), line
    for p in paths:
        assert any(line.startswith(f"error: {config}: {p}") for line in lines), (p, lines)
    assert "Traceback" not in result.output
    assert not out.exists()  # nothing started


def test_cli_invalid_toml_in_a_real_process(tmp_path: Path) -> None:
    import subprocess
    import sys

    config = tmp_path / "broken.toml"
    config.write_text("seed = = 1\n")
    proc = subprocess.run([sys.executable, "-m", "autosim_core.cli", "run", str(config), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {config}: not valid TOML"), proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


# ------------------------------------------------------------------ all errors in one pass ---
def folder_task_registry() -> Any:
    """The plugins with the toy task given a ``load_dataset`` that reads folders only."""
    from autosim_core.plugins import load_registry
    from autosim_core.toy import ToyTask

    class FolderTask(ToyTask):
        @hookimpl
        def load_dataset(self, path: str) -> list[Any]:
            return []

    registry = load_registry()
    registry.plugins["tasks"]["toy-logistic"] = FolderTask()
    return registry


def test_every_error_of_a_config_in_one_pass(toy_example: dict[str, Any], tmp_path: Path) -> None:
    """An unknown estimator, a bad preset, a negative epoch count, a bad task setting and a
    missing folder: five lines from one try, each starting with its key path."""
    registry = folder_task_registry()
    data = copy.deepcopy(toy_example)
    data["estimator"] = {"name": "quadratik"}
    data["validation"]["preset"] = "tagret"
    data["training"]["epochs"] = -2
    data["task"]["settings"] = {"hidden": -1}
    data["test"] = {"source": "folder", "path": str(tmp_path / "absent")}
    with pytest.raises(ConfigError) as info:
        open_run(data, tmp_path / "out", registry=registry)
    paths = sorted(line.split(":")[0] for line in info.value.lines)
    assert paths == ["estimator.name", "task.settings.hidden", "test.path", "training.epochs",
                     "validation.preset"], info.value.lines

    config = tmp_path / "five.toml"
    config.write_text('seed = 0\n[simulator]\nname = "toy-gaussians"\n'
                      '[task]\nname = "toy-logistic"\nsettings = { hidden = -1 }\n'
                      '[estimator]\nname = "quadratik"\n[training]\nepochs = -2\n[budget]\niterations = 1\n'
                      '[validation]\npreset = "tagret"\nseed = 1\n[test]\nsource = "folder"\npath = "absent"\n')
    with pytest.raises(ConfigError) as info:
        open_run(config, tmp_path / "out", registry=registry)
    assert len(info.value.lines) == 5 and all(line.startswith(f"{config}: ") for line in info.value.lines)
    assert not (tmp_path / "out").exists()


def test_an_image_and_mask_pair_for_a_task_that_reads_folders_only_is_one_line(toy_example: dict[str, Any],
                                                                                  tmp_path: Path) -> None:
    registry = folder_task_registry()
    image, mask = tmp_path / "image.png", tmp_path / "mask.png"
    image.write_bytes(b"")
    mask.write_bytes(b"")
    data = copy.deepcopy(toy_example)
    data["test"] = {"source": "folder", "path": str(image), "mask": str(mask)}
    with pytest.raises(ConfigError) as info:
        open_run(data, tmp_path / "out", registry=registry)
    assert info.value.lines == ["test.mask: task 'toy-logistic' reads folders only, not an image + mask pair"]


def test_errors_of_a_dropped_table_are_not_reported_twice(toy_example: dict[str, Any], tmp_path: Path) -> None:
    data = copy.deepcopy(toy_example)
    data["validation"]["source"] = "folder"  # no path: the table is invalid as a whole
    data["searcher"]["settings"] = {"lrate": 1}
    with pytest.raises(ConfigError) as info:
        open_run(data, tmp_path / "out")
    assert sorted(line.split(":")[0] for line in info.value.lines) == ["searcher.settings.lrate", "validation"]


def test_cli_reports_errors_of_every_stage_at_once(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(BASE + "[budget]\niterations = 1\n[training]\nepochs = -1\n"
                      "[searcher]\nsettings = { lrate = 1 }\n[estimator]\nname = 'nope'\n")
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert sorted(line.split(": ")[2].split(":")[0] for line in lines) == [
        "estimator.name", "searcher.settings.lrate", "training.epochs"], lines


def test_cli_non_utf8_config_is_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    config = tmp_path / "latin1.toml"
    config.write_bytes('# caf\u00e9\nseed = 0\n'.encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(config)
    (line,) = info.value.lines
    assert line.startswith(f"{config}: not UTF-8 text"), line
    proc = subprocess.run([sys.executable, "-m", "autosim_core.cli", "run", str(config), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {config}: not UTF-8 text"), proc.stderr
    assert "Traceback" not in proc.stderr and "UnicodeDecodeError" not in proc.stderr


# ------------------------------------------------------------------ evaluation-set seeds ---
def test_folder_sets_need_no_seed(toy_example: dict[str, Any], tmp_path: Path) -> None:
    data = copy.deepcopy(toy_example)
    data["test"] = {"source": "folder", "path": str(tmp_path)}
    config = parse_config(data)
    assert config.test is not None and config.test.seed is None


def test_rendered_sets_need_a_seed(toy_example: dict[str, Any]) -> None:
    data = copy.deepcopy(toy_example)
    del data["test"]["seed"]
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    (line,) = info.value.lines
    assert line.startswith("test: source = 'simulator' needs seed"), line
