"""``[simulator] start`` naming a finished run's psi.json: the new run starts at that run's psi,
the path is relative to the config file, and a file that does not fit is one clear line."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from flaky_simulator import flaky_simulator

from autosim_core.config import ConfigError, load_config, parse_config
from autosim_core.run import Run, open_run

K = 16


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path, make_toy_data) -> Path:
    """The psi.json of a short AutoSimulate run on the toy, whose psi has left the `initial` preset."""
    data = make_toy_data(cache_dir, estimator="linear", iterations=3, val_count=40)
    data["training"] = {"epochs": 1, "batch_size": K, "lr": 0.05}
    data["searcher"] = {"name": "autosimulate", "settings": {"scenes_per_iteration": K, "lr": 0.3}}
    folder = tmp_path_factory.mktemp("finished") / "run"
    Run(parse_config(data), folder).execute()
    return folder / "psi.json"


@pytest.fixture
def started(finished_run: Path, cache_dir: Path, make_toy_data) -> dict[str, Any]:
    """A toy config whose psi starts from ``finished_run``."""
    data = make_toy_data(cache_dir, estimator="linear", iterations=1, val_count=40)
    data["simulator"]["start"] = str(finished_run)
    return data


def raw_psi(path: Path) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v) for k, v in json.loads(path.read_text())["raw"].items()}


def errors_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        Run(parse_config(data), "/nonexistent/never-created")
    return info.value.lines


def write_psi(path: Path, space: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"psi": {}, "raw": {}, "space": space}))
    return path


def test_a_run_started_from_a_psi_json_starts_at_that_runs_psi(finished_run: Path, started: dict[str, Any],
                                                               make_toy_data, cache_dir: Path) -> None:
    raw = raw_psi(finished_run)
    initial = Run(parse_config(make_toy_data(cache_dir, iterations=1, val_count=40)), "/nonexistent/a")
    moved = [k for k, v in initial.space.init_psi().items() if not torch.allclose(v.detach(), raw[k], atol=1e-3)]
    assert moved, "the finished run's psi never left the start: the comparison below would prove nothing"

    psi = Run(parse_config(started), "/nonexistent/b").space.init_psi()
    assert set(psi) == set(raw)
    for key, value in raw.items():
        # psi.json keeps the space as means and stds, whose float32 round trip costs an ulp or so
        torch.testing.assert_close(psi[key].detach(), value, rtol=1e-6, atol=1e-6, msg=key)


def test_overrides_apply_after_the_file_and_the_declared_learn_flags_hold(
        finished_run: Path, started: dict[str, Any], tmp_path: Path) -> None:
    raw = raw_psi(finished_run)
    started["simulator"]["overrides"] = {"x1": {"mean": 1.25}}
    run = Run(parse_config(started), "/nonexistent/c")
    psi = run.space.init_psi()
    assert float(psi["x1.loc"].detach()) == pytest.approx(1.25)
    torch.testing.assert_close(psi["y1.loc"].detach(), raw["y1.loc"], rtol=1e-6, atol=1e-6)

    # A file whose run froze x1 and learnt x0: the new run learns what its simulator declares.
    spec = json.loads(finished_run.read_text())["space"]
    spec["x1"]["learn"], spec["x0"]["learn"] = False, True
    started["simulator"] = {"name": "toy-gaussians", "start": str(write_psi(tmp_path / "psi.json", spec))}
    space = Run(parse_config(started), "/nonexistent/d").space
    assert space["x1"].learn and not space["x0"].learn
    started["simulator"]["overrides"] = {"x1": {"learn": False}}
    assert not Run(parse_config(started), "/nonexistent/e").space["x1"].learn


def test_a_relative_path_is_relative_to_the_config_file(finished_run: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch, cache_dir: Path) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "psi.json").write_text(finished_run.read_text())
    config = configs / "from_psi.toml"
    config.write_text(f'cache_dir = "{cache_dir}"\n[simulator]\nname = "toy-gaussians"\nstart = "../runs/psi.json"\n'
                      '[task]\nname = "toy-logistic"\n[estimator]\nname = "linear"\n[budget]\niterations = 1\n'
                      '[validation]\ncount = 40\nseed = 1001\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the path must not depend on where autosim is started
    assert load_config(config).simulator.start == str((tmp_path / "runs" / "psi.json").resolve())
    psi = open_run(config, tmp_path / "out").space.init_psi()
    for key, value in raw_psi(finished_run).items():
        torch.testing.assert_close(psi[key].detach(), value, rtol=1e-6, atol=1e-6, msg=key)

    absolute = configs / "absolute.toml"
    absolute.write_text(config.read_text().replace("../runs/psi.json", str(finished_run)))
    assert load_config(absolute).simulator.start == str(finished_run)
    missing = configs / "missing.toml"
    missing.write_text(config.read_text().replace("../runs/psi.json", "absent/psi.json"))
    with pytest.raises(ConfigError) as info:
        open_run(missing, tmp_path / "out2")
    (line,) = info.value.lines
    assert line.startswith(f"{missing}: simulator.start: {configs / 'absent' / 'psi.json'}: cannot read"), line


def test_a_preset_start_is_unchanged(started: dict[str, Any]) -> None:
    started["simulator"]["start"] = "target"
    space = Run(parse_config(started), "/nonexistent/f").space
    assert float(space.init_psi()["x1.loc"].detach()) == pytest.approx(3.0)


def spec_of(finished_run: Path) -> dict[str, Any]:
    return copy.deepcopy(json.loads(finished_run.read_text())["space"])


@pytest.mark.parametrize("case", ["missing", "not-json", "no-space", "other-simulator", "family", "repeat",
                                  "bad-setting"])
def test_a_psi_json_that_does_not_fit_is_one_clear_line(case: str, finished_run: Path, started: dict[str, Any],
                                                        tmp_path: Path) -> None:
    path = tmp_path / "psi.json"
    spec = spec_of(finished_run)
    if case == "not-json":
        path.write_text("{not json")
    elif case == "no-space":
        path.write_text(json.dumps({"psi": {}, "raw": {}}))
    elif case == "other-simulator":
        write_psi(path, flaky_simulator.parameter_space().to_dict())
    elif case == "family":
        spec["x1"] = {"family": "lognormal", "median": 1.0, "std": 0.3}
        write_psi(path, spec)
    elif case == "repeat":
        spec["y1"]["repeat"] = 3
        write_psi(path, spec)
    elif case == "bad-setting":
        spec["y1"]["std"] = -1.0
        write_psi(path, spec)
    started["simulator"]["start"] = str(path)
    lines = errors_of(started)
    assert len(lines) == 1, lines
    (line,) = lines
    assert line.startswith(f"simulator.start: {path}: "), line
    words = {
        "missing": ["cannot read"],
        "not-json": ["not JSON"],
        "no-space": ["no 'space'"],
        "other-simulator": ["missing 'label', 'x0', 'y0', 'x1', 'y1'", "extra 'x'"],
        "family": ["'x1'", "'lognormal' in the file", "'normal' in the simulator's space"],
        "repeat": ["'y1'", "repeat 3 in the file", "1 in the simulator's space"],
        "bad-setting": ["y1.std", "greater than 0"],
    }[case]
    for word in words:
        assert word in line, (word, line)


def test_problems_of_the_file_join_the_configs_other_errors(finished_run: Path, started: dict[str, Any],
                                                            tmp_path: Path) -> None:
    spec = spec_of(finished_run)
    del spec["y0"]
    spec["x1"]["family"] = "bounded"
    started["simulator"]["start"] = str(write_psi(tmp_path / "psi.json", spec))
    started["training"]["device"] = "cuda:99"
    lines = errors_of(started)
    assert sorted(line.split(":")[0] for line in lines) == ["simulator.start", "simulator.start",
                                                            "training.device"], lines
    assert any("missing 'y0'" in line for line in lines) and any("'x1' is 'bounded'" in line for line in lines)
