"""autosim list / run from the command line; plugins that fail to load; fast start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from autosim_core import plugins
from autosim_core.cli import app


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "autosim_core.cli", *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=cwd)


def test_list_json_shows_the_core_plugins() -> None:
    result = CliRunner().invoke(app, ["list", "--json"])
    assert result.exit_code == 0, result.output
    listing = json.loads(result.stdout)
    names = {kind: {p["name"] for p in listing[kind]} for kind in ("simulators", "tasks", "estimators", "searchers")}
    assert {"quadratic", "approx-quadratic", "linear", "no-val"} <= names["estimators"]
    assert "autosimulate" in names["searchers"]
    assert "toy-gaussians" in names["simulators"]
    assert "toy-logistic" in names["tasks"]
    targets = {p["name"]: p["target"] for p in listing["estimators"]}
    assert targets["quadratic"] == "autosim_core.builtin.estimators:quadratic_plugin"
    assert isinstance(listing["failed"], list)


def test_list_plain() -> None:
    result = CliRunner().invoke(app, ["list"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    estimators = next(line for line in lines if line.startswith("estimators:"))
    for name in ("approx-quadratic", "linear", "no-val", "quadratic"):
        assert name in estimators


@pytest.fixture(scope="module")
def broken_plugins(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder on PYTHONPATH with a distribution declaring three plugins: one whose module is
    missing, one whose module raises on import, and one that works."""
    root = tmp_path_factory.mktemp("site")
    dist = root / "autosim_broken_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: autosim-broken-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent("""\
        [autosim.simulators]
        ghost = autosim_no_such_module_xyz:plugin

        [autosim.estimators]
        explodes = autosim_explodes_on_import:plugin
        fine = autosim_fine_demo:plugin
        """))
    (root / "autosim_explodes_on_import.py").write_text("raise RuntimeError('boom at import')\n")
    (root / "autosim_fine_demo.py").write_text("plugin = object()\n")
    return root


def env_with(path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(path), *filter(None, [env.get("PYTHONPATH")])])
    return env


def test_plugins_that_fail_to_load_are_reported_not_raised(broken_plugins: Path, tmp_path: Path) -> None:
    proc = cli("list", "--json", env=env_with(broken_plugins), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    listing = json.loads(proc.stdout)
    failed = {f["name"]: f for f in listing["failed"]}
    assert failed["ghost"]["group"] == "simulators"
    assert failed["ghost"]["target"] == "autosim_no_such_module_xyz:plugin"
    reason = failed["ghost"]["reason"]
    assert "ModuleNotFoundError" in reason and "autosim_no_such_module_xyz" in reason
    assert failed["explodes"]["group"] == "estimators"
    assert failed["explodes"]["reason"] == "RuntimeError: boom at import"
    estimators = {p["name"] for p in listing["estimators"]}
    assert {"fine", "quadratic", "approx-quadratic", "linear", "no-val"} <= estimators
    assert "toy-gaussians" in {p["name"] for p in listing["simulators"]}


@pytest.fixture
def broken_on_path(broken_plugins: Path, monkeypatch: pytest.MonkeyPatch):
    """The broken distribution on sys.path of this process, with stevedore's per-group cache emptied."""
    import stevedore

    monkeypatch.syspath_prepend(str(broken_plugins))
    monkeypatch.setattr(stevedore.ExtensionManager, "ENTRY_POINT_CACHE", {})
    yield broken_plugins
    for name in ("autosim_fine_demo", "autosim_explodes_on_import"):
        sys.modules.pop(name, None)


def test_list_in_process_reports_failures_on_stderr(broken_on_path: Path) -> None:
    result = CliRunner().invoke(app, ["list"])
    assert result.exit_code == 0, result.output
    assert "fine" in next(line for line in result.stdout.splitlines() if line.startswith("estimators:"))
    assert "failed to load simulator 'ghost'" in result.stderr and "ModuleNotFoundError" in result.stderr
    assert "failed to load estimator 'explodes'" in result.stderr and "boom at import" in result.stderr
    assert "Traceback" not in result.output


def test_running_a_plugin_that_failed_to_load_is_a_config_error(broken_on_path: Path, tmp_path: Path) -> None:
    config = tmp_path / "ghost.toml"
    config.write_text('[simulator]\nname = "ghost"\n[task]\nname = "toy-logistic"\n[budget]\niterations = 1\n'
                      '[estimator]\nname = "no-val"\n')
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {config}: simulator.name:")
    assert "failed to load" in lines[0] and "ModuleNotFoundError" in lines[0]
    assert not (tmp_path / "out").exists()


def test_load_registry_records_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    """load_registry with stevedore's manager replaced: failures are collected per group."""
    import stevedore

    class EntryPoint:
        def __init__(self, name: str, value: str):
            self.name, self.value = name, value

    class Extension:
        def __init__(self, name: str, plugin: Any):
            self.name, self.plugin, self.entry_point = name, plugin, EntryPoint(name, f"pkg:{name}")

    class FakeManager:
        def __init__(self, group: str, invoke_on_load: bool, on_load_failure_callback: Any):
            self.extensions = [Extension(f"ok-{group}", object())]
            on_load_failure_callback(self, EntryPoint(f"bad-{group}", "pkg:bad"), ImportError("no pkg"))

        def __iter__(self):
            return iter(self.extensions)

    monkeypatch.setattr(stevedore, "ExtensionManager", FakeManager)
    registry = plugins.load_registry()
    assert set(registry.plugins) == set(plugins.GROUPS)
    for kind, group in plugins.GROUPS.items():
        assert list(registry.plugins[kind]) == [f"ok-{group}"]
    assert [(f.group, f.name, f.reason) for f in registry.failures] == [
        (kind, f"bad-{group}", "ImportError: no pkg") for kind, group in plugins.GROUPS.items()]
    with pytest.raises(LookupError, match="failed to load: ImportError: no pkg"):
        registry.get("simulators", "bad-autosim.simulators")
    with pytest.raises(LookupError, match=r"installed: ok-autosim\.tasks"):
        registry.get("tasks", "nope")
    as_json = registry.as_json()
    assert as_json["failed"][0] == {"group": "simulators", "name": "bad-autosim.simulators",
                                    "target": "pkg:bad", "reason": "ImportError: no pkg"}


NO_TORCH = """
import sys
{body}
heavy = sorted(m for m in ("torch", "numpy", "matplotlib") if m in sys.modules)
assert not heavy, heavy
"""


@pytest.mark.parametrize("body", [
    "import autosim_core.cli",
    "from typer.testing import CliRunner\nfrom autosim_core.cli import app\n"
    "for args in (['--help'], ['run', '--help'], ['list', '--help']):\n"
    "    r = CliRunner().invoke(app, args)\n    assert r.exit_code == 0, r.output",
    "from autosim_core import ParameterSpace, Normal, Categorical, hookimpl\n"
    "ParameterSpace(light=Normal(mean=1.0, std=0.3, low=0.0), floor=Categorical(choices=['wood', 'tile']))",
], ids=["import-cli", "help", "plugin-author-api"])
def test_fast_start_does_not_import_torch(body: str) -> None:
    proc = subprocess.run([sys.executable, "-c", NO_TORCH.format(body=body)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_cli_run_end_to_end(tmp_path: Path, toy_example: dict[str, Any], cache_dir: Path,
                            caplog: pytest.LogCaptureFixture) -> None:
    """`autosim run` on a short toy config writes the run folder and prints a one-line summary."""
    text = (Path(__file__).resolve().parents[1] / "examples" / "toy.toml").read_text()
    text = text.replace("iterations = 40", "iterations = 2").replace("count = 500", "count = 50")
    text = f'cache_dir = "{cache_dir}"\n' + text
    config = tmp_path / "toy.toml"
    config.write_text(text)
    out = tmp_path / "run"
    # --resume on a folder that does not exist yet starts the run (a requeued job's command line)
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(out), "--resume"])
    assert result.exit_code == 0, result.output
    assert f"--resume: nothing to resume in {out}; starting the run" in caplog.messages
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["iterations"] == 2 and summary["images"] == 2 * 64
    assert (out / "config.toml").read_text() == text
    assert len((out / "history.jsonl").read_text().splitlines()) == 2
    # the same folder again: refused without --resume, a no-op with it (budget already spent)
    again = CliRunner().invoke(app, ["run", str(config), "--out", str(out)])
    assert again.exit_code == 2 and "--resume" in again.stderr
    resumed = CliRunner().invoke(app, ["run", str(config), "--out", str(out), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert len((out / "history.jsonl").read_text().splitlines()) == 2
