"""Start-up benchmark: how long the command line takes, timed as whole processes.

Each case starts a fresh ``autosim`` process ``--repeat`` times (after one untimed warm-up) and
records wall seconds (median, min, max) and the process's peak RSS (from ``wait4``):

* ``autosim --help``, ``autosim list``, ``autosim list --json`` and ``autosim list --settings
  NAME``, with whatever plugins are installed (their names are in the JSON);
* ``autosim run``'s time from the process's start to its first rendered training scenes, on
  the toy config and (with autosim-clevr and autosim-unet installed) on the CLEVR + UNet
  config, each shrunk to 2 scenes per iteration so that start-up, not rendering, is what is
  timed. An observer plugin, installed for these runs only from a temporary folder on
  PYTHONPATH, writes the time at the first ``on_render`` and ends the process there. The
  validation and test sets come from a cache the warm-up run fills.

This script imports only the standard library, so any installed version of autosim can be
measured by running it with that environment's Python::

    python benchmarks/startup.py --out bench-results/startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from importlib import metadata
from pathlib import Path

TOY = """
seed = 0
cache_dir = "{cache}"
[simulator]
name = "toy-gaussians"
start = "initial"
[task]
name = "toy-logistic"
[searcher]
name = "autosimulate"
settings = {{ scenes_per_iteration = 2, lr = 0.1 }}
[estimator]
name = "quadratic"
[budget]
iterations = 1
[validation]
preset = "target"
count = 500
seed = 1001
[test]
preset = "target"
count = 500
seed = 2002
"""

CLEVR_UNET = """
seed = 0
cache_dir = "{cache}"
[simulator]
name = "clevr"
start = "initial"
settings = {{ backend = "fast", output_size = [64, 64] }}
[task]
name = "unet"
settings = {{ depth = 2, width = 16, class_weights = [0.25, 1.0, 1.0, 1.0] }}
[searcher]
name = "autosimulate"
settings = {{ scenes_per_iteration = 2, lr = 0.15 }}
[estimator]
name = "linear"
[budget]
iterations = 1
[validation]
preset = "target"
count = 16
seed = 1001
[test]
preset = "target"
count = 16
seed = 2002
"""

OBSERVER = '''
"""Writes the wall-clock time of the run's first rendered training scenes, then ends the process."""
import os
import time

from autosim_core import hookimpl


class FirstRender:
    @hookimpl
    def on_render(self):
        with open(os.environ["AUTOSIM_BENCH_FIRST_RENDER"], "w") as f:
            f.write(repr(time.time()))
        os._exit(0)
'''


def autosim_command() -> list[str]:
    script = shutil.which("autosim", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "autosim_core.cli"]


def one_process(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, int, float]:
    """(wall seconds, peak RSS in MiB, exit status, start time) of one process."""
    start_wall = time.time()
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss / 1024, proc.returncode, start_wall


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def time_command(argv: list[str], repeat: int, env: dict[str, str], cwd: Path) -> dict[str, object]:
    one_process(argv, env, cwd)  # warm-up: the OS's file cache, stevedore's entry-point cache
    walls, peaks, codes = [], [], []
    for _ in range(repeat):
        wall, peak, code, _ = one_process(argv, env, cwd)
        walls.append(wall)
        peaks.append(peak)
        codes.append(code)
    return {"argv": argv[1:] if argv[0].endswith("autosim") else argv, "repeat": repeat,
            "wall_s": summary(walls), "max_rss_mib": summary(peaks), "exit_codes": sorted(set(codes))}


def time_first_render(name: str, template: str, repeat: int, env: dict[str, str], tmp: Path) -> dict[str, object]:
    """Seconds from ``autosim run``'s start to its first rendered training scenes."""
    site = tmp / "observer-site"
    if not site.exists():
        dist = site / "autosim_bench_first_render-0.1.dist-info"
        dist.mkdir(parents=True)
        (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: autosim-bench-first-render\nVersion: 0.1\n")
        (dist / "entry_points.txt").write_text(
            "[autosim.observers]\nbench-first-render = autosim_bench_first_render:FirstRender\n")
        (site / "autosim_bench_first_render.py").write_text(textwrap.dedent(OBSERVER))
    config = tmp / f"{name}.toml"
    config.write_text(template.format(cache=tmp / "cache"))
    marker = tmp / f"{name}.first-render"
    run_env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")])),
               "AUTOSIM_BENCH_FIRST_RENDER": str(marker)}
    seconds, walls, peaks = [], [], []
    for i in range(repeat + 1):  # the first fills the cache of validation and test sets
        out = tmp / f"{name}-run-{i}"
        marker.unlink(missing_ok=True)
        wall, peak, code, started = one_process([*autosim_command(), "run", str(config), "--out", str(out)],
                                                run_env, tmp)
        if code != 0 or not marker.exists():
            raise RuntimeError(f"autosim run {config} failed (exit {code}) before rendering")
        if i:
            seconds.append(float(marker.read_text()) - started)
            walls.append(wall)
            peaks.append(peak)
        shutil.rmtree(out, ignore_errors=True)
    return {"config": template.format(cache="CACHE"), "repeat": repeat, "first_render_s": summary(seconds),
            "wall_s": summary(walls), "max_rss_mib": summary(peaks)}


def installed() -> dict[str, str]:
    names = ("autosim-core", "autosim-clevr", "autosim-unet", "autosim-yolo", "autosim-arnold", "torch")
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-results/startup.json"))
    parser.add_argument("--repeat", type=int, default=7, help="timed processes per case (after one warm-up)")
    parser.add_argument("--settings", nargs="*", default=["autosimulate", "clevr"],
                        help="NAMEs for `autosim list --settings NAME` (those installed)")
    args = parser.parse_args()

    packages = installed()
    env = {**os.environ, "MPLBACKEND": "Agg"}
    env.setdefault("OMP_NUM_THREADS", "1")
    results: dict[str, object] = {"python": platform.python_version(), "machine": platform.machine(),
                                  "cpus": os.cpu_count(), "packages": packages, "commands": {}, "first_render": {}}
    with tempfile.TemporaryDirectory(prefix="autosim-startup-") as tmp_name:
        tmp = Path(tmp_name)
        commands = {"help": ["--help"], "list": ["list"], "list-json": ["list", "--json"]}
        plugin_names = {"autosimulate": "autosim-core", "clevr": "autosim-clevr"}
        for name in args.settings:
            if name not in plugin_names or plugin_names[name] in packages:
                commands[f"list-settings-{name}"] = ["list", "--settings", name]
        for key, argv in commands.items():
            results["commands"][key] = time_command([*autosim_command(), *argv], args.repeat, env, tmp)
            print(key, json.dumps(results["commands"][key]["wall_s"]), flush=True)
        cases = {"toy": TOY}
        if {"autosim-clevr", "autosim-unet"} <= set(packages):
            cases["clevr-unet"] = CLEVR_UNET
        for key, template in cases.items():
            results["first_render"][key] = time_first_render(key, template, args.repeat, env, tmp)
            print(f"run {key}: first render", json.dumps(results["first_render"][key]["first_render_s"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
