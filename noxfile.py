"""Test, lint and benchmark sessions. ``nox`` runs lint, the core's tests, the Ray executor's (on a local
Ray, in an environment of their own) and every plugin's (``plugins``: all of them in one environment);
``nox -s clevr`` and the other plugin sessions run one plugin beside the core alone; ``nox -s bench``
writes benchmark JSON to bench-results/.

Every install applies constraints.txt (the torch/torchvision pair). uv does not read pip's
configuration, so pip's find-links and extra index URLs are handed to uv here: on machines with
a local package mirror, torch then installs from disk instead of being downloaded.
"""

from __future__ import annotations

import os
import subprocess
import sys

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["lint", "core", "ray", "plugins"]

CONSTRAINTS = ("-c", "constraints.txt")
CORE = ("-e", ".[test,baselines]")
# tests/test_guide.py builds and installs the guide's example plugin (docs/examples/my-renderer).
GUIDE = ("pip", "hatchling>=1.18")
CLEVR = ("-e", "plugins/autosim_clevr")
UNET = ("-e", "plugins/autosim_unet")
YOLO = ("-e", "plugins/autosim_yolo")
ARNOLD = ("-e", "plugins/autosim_arnold[blender,test]")
NUCLEI = ("-e", "plugins/autosim_nuclei")
# The real image ships inside the stardist wheel; only its files are read, so none of its own
# dependencies (TensorFlow among them) is installed.
REAL_NUCLEI = ("--no-deps", "stardist", "tifffile")
PYTHON = "3.11"


def _pip_config() -> dict[str, str]:
    try:
        out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                             text=True, timeout=60, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    found = {}
    for line in out.splitlines():
        key, _, value = line.partition("=")
        found[key.split(".", 1)[-1]] = value.strip().strip("'\"")
    return found


def _uv_env() -> None:
    config = _pip_config()
    if config.get("find-links") and "UV_FIND_LINKS" not in os.environ:
        os.environ["UV_FIND_LINKS"] = ",".join(config["find-links"].split())
    if config.get("extra-index-url") and "UV_EXTRA_INDEX_URL" not in os.environ:
        os.environ["UV_EXTRA_INDEX_URL"] = config["extra-index-url"]
    if config.get("index-url") and "UV_DEFAULT_INDEX" not in os.environ:
        os.environ["UV_DEFAULT_INDEX"] = config["index-url"]
    os.environ.setdefault("UV_INDEX_STRATEGY", "unsafe-best-match")
    os.environ.setdefault("UV_LINK_MODE", "hardlink")


_uv_env()


def _install(session: nox.Session, *specs: tuple[str, ...]) -> None:
    args: list[str] = []
    for spec in specs:
        args.extend(spec)
    session.install(*CONSTRAINTS, *args)


def _pytest(session: nox.Session, *paths: str, parallel: bool = False, env: dict[str, str] | None = None) -> None:
    """pytest on ``paths``; ``parallel``: the tests shared out over up to two processes (pytest-xdist,
    one per core of the machines CI runs on): the core's 400 tests take 110 s instead of 175 s."""
    env = {"AUTOSIM_CACHE": str(session.create_tmp() + "/autosim-cache"), "MPLBACKEND": "Agg", **(env or {})}
    workers = ("-n", "auto", "--maxprocesses", "2") if parallel else ()
    session.run("pytest", "-q", "--durations=15", *workers, *paths, *session.posargs, env=env)


# Ray's socket paths must stay short: a session's own folder under /tmp.
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_TMPDIR": f"/tmp/ray-{os.getpid()}"}


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")


@nox.session(python=PYTHON)
def core(session: nox.Session) -> None:
    """The core alone (and what installs the guide's example plugin)."""
    # The tensorboard extra: tests/test_observers.py reads the TensorBoard observer's event files.
    _install(session, ("-e", ".[test,baselines,tensorboard]"), GUIDE)
    _pytest(session, "tests", parallel=True)


@nox.session(python=PYTHON)
def ray(session: nox.Session) -> None:
    """The Ray executor on a local Ray (started by the tests and shut down after them), on one process:
    its tests share the one Ray."""
    _install(session, ("-e", ".[ray,test]"))
    _pytest(session, "tests/test_executors_ray.py", env=RAY_ENV)


# Every plugin's tests and the integration suite. The plugins' test folders hold files of the same name
# (test_entry_point.py, conftest.py), so pytest imports them by path; the folders of the helper modules
# their tests import by name go on sys.path.
PLUGIN_TESTS = ("plugins/autosim_clevr/tests", "plugins/autosim_unet/tests", "plugins/autosim_yolo/tests",
                "plugins/autosim_arnold/tests", "plugins/autosim_nuclei/tests", "integration")
TEST_HELPERS = "pythonpath=plugins/autosim_clevr/tests plugins/autosim_unet/tests plugins/autosim_arnold/tests"


@nox.session(python=PYTHON)
def plugins(session: nox.Session) -> None:
    """Every plugin in one environment, with Blender (bpy) and the real nuclei image: each plugin's
    tests, Cycles against the fast backend, arnold's examples fed to the detector, CLEVR renders
    segmented by the UNet. One environment installs torch and bpy once; that no plugin leans on
    another is tested from their imports (tests/test_architecture.py)."""
    _install(session, CORE, ("-e", "plugins/autosim_clevr[blender]"), UNET, ("-e", "plugins/autosim_yolo[test]"),
             ARNOLD, NUCLEI, ("tomli-w",))
    _install(session, REAL_NUCLEI)
    _pytest(session, "--import-mode=importlib", "-o", TEST_HELPERS, *PLUGIN_TESTS, parallel=True)


@nox.session(python=PYTHON)
def clevr(session: nox.Session) -> None:
    """autosim-clevr beside the core (fast backend)."""
    _install(session, CORE, CLEVR)
    _pytest(session, "plugins/autosim_clevr/tests")


@nox.session(python=PYTHON)
def cycles(session: nox.Session) -> None:
    """autosim-clevr with Blender (the bpy wheel): Cycles renders against the fast backend."""
    _install(session, CORE, ("-e", "plugins/autosim_clevr[blender]"))
    _pytest(session, "plugins/autosim_clevr/tests/test_cycles.py")


@nox.session(python=PYTHON)
def arnold(session: nox.Session) -> None:
    """autosim-arnold with Blender (the bpy wheel): layouts, the cell categorical, Cycles renders, and
    its examples fed to autosim-yolo's detection task."""
    _install(session, CORE, ARNOLD, YOLO)
    _pytest(session, "plugins/autosim_arnold/tests")


@nox.session(python=PYTHON)
def unet(session: nox.Session) -> None:
    """autosim-unet beside the core."""
    _install(session, CORE, UNET)
    _pytest(session, "plugins/autosim_unet/tests")


@nox.session(python=PYTHON)
def yolo(session: nox.Session) -> None:
    """autosim-yolo beside the core: detectors, COCO/BOP data, the shapes simulator."""
    _install(session, CORE, ("-e", "plugins/autosim_yolo[test]"), ("tomli-w",))
    _pytest(session, "plugins/autosim_yolo/tests", parallel=True)


@nox.session(python=PYTHON)
def nuclei(session: nox.Session) -> None:
    """autosim-nuclei with the UNet task, validated and tested on the real image of the stardist wheel."""
    _install(session, CORE, NUCLEI, UNET)
    _install(session, REAL_NUCLEI)
    _pytest(session, "plugins/autosim_nuclei/tests")


@nox.session(python=PYTHON)
def clevr_unet(session: nox.Session) -> None:
    """The combination the demo uses: CLEVR renders, UNet segments."""
    _install(session, CORE, CLEVR, UNET, ("tomli-w",))
    _pytest(session, "integration")


# The mutants `nox -s mutants` runs by default: the hypergradient maths, the parameter space and
# the budget path of the loop (docs/mutation.md). Pass other mutmut name patterns after `--`.
MUTANTS = ("autosim_core.contracts.*", "autosim_core.estimators.*", "autosim_core.hypergrad.*",
           "autosim_core.families.*", "autosim_core.space.*",
           "autosim_core.run.xǁRunǁ_budget_left__mutmut_*", "autosim_core.run.xǁRunǁrender_training__mutmut_*")


@nox.session(python=PYTHON)
def mutants(session: nox.Session) -> None:
    """Mutation testing with mutmut ([tool.mutmut] in pyproject.toml); not a default session.

    Prints the killed / survived counts; `mutmut results` and `mutmut show NAME` in the same
    environment list and show the survivors."""
    _install(session, CORE, ("mutmut>=3.3",))
    env = {"AUTOSIM_CACHE": str(session.create_tmp() + "/autosim-cache"), "MPLBACKEND": "Agg",
           "OMP_NUM_THREADS": "1"}
    session.run("mutmut", "run", *(session.posargs or MUTANTS), env=env)
    session.run("mutmut", "results", env=env)


@nox.session(python=PYTHON, name="bench-clevr")
def bench_clevr(session: nox.Session) -> None:
    """The paper's Table 2 analog: every searcher on CLEVR + UNet over 3 seeds (docs/results.md)."""
    _install(session, CORE, CLEVR, UNET, ("tomli-w",))
    session.run("python", "benchmarks/table2.py", "--out", "bench-results/table2", *session.posargs,
                env={"AUTOSIM_CACHE": os.path.abspath("bench-results/autosim-cache")})


@nox.session(python=PYTHON, name="bench-detection")
def bench_detection(session: nox.Session) -> None:
    """The paper's Tables 3 and 4 analog: object placement (arnold, Cycles) + YOLO, every method over
    2 seeds, about an hour on two cores (docs/results.md). ``-- --smoke`` proves it end to end."""
    _install(session, CORE, ARNOLD, ("-e", "plugins/autosim_yolo"), ("tomli-w",))
    session.run("python", "benchmarks/detection.py", "--out", "bench-results/detection", *session.posargs,
                env={"AUTOSIM_CACHE": os.path.abspath("bench-results/autosim-cache")})


@nox.session(python=PYTHON, name="bench-detection-recipe")
def bench_detection_recipe(session: nox.Session) -> None:
    """YOLO training recipes' learning curves on the shapes target preset, one thread, 2 seeds: the
    plugin README's tables (about half an hour of one idle core; docs/results/detection-recipe.json)."""
    _install(session, CORE, YOLO)
    os.makedirs("bench-results", exist_ok=True)
    script = "plugins/autosim_yolo/recipe_curves.py"
    session.run("python", script, "--out", "bench-results/detection-recipe-300.json", "--variants", "base",
                "multi-anchor-cells", "multi-anchor", "warmup-cosine", "ema", "yolov5-gains", "obj-pos-weight-4",
                "input-160", "width-0.5", "--seeds", "0", "1", "--steps", "300", "--eval-every", "50")
    session.run("python", script, "--out", "bench-results/detection-recipe-900.json", "--variants", "base",
                "multi-anchor", "multi-anchor-cells", "multi-anchor-warmup-cosine-ema", "--seeds", "0", "1",
                "--steps", "900", "--eval-every", "150")


@nox.session(python=PYTHON, name="bench-nuclei")
def bench_nuclei(session: nox.Session) -> None:
    """Sim-to-real on the real nuclei image: AutoSimulate, initial, wide and random search under the
    fresh-model protocol over 5 seeds, and the three-class (boundary) examples beside them, under 20
    minutes on two cores (docs/results.md)."""
    _install(session, CORE, NUCLEI, UNET, ("matplotlib",))
    _install(session, REAL_NUCLEI)
    session.run("python", "benchmarks/nuclei.py", "--out", "bench-results/nuclei", *session.posargs,
                env={"AUTOSIM_CACHE": os.path.abspath("bench-results/autosim-cache")})


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks of the core and of each plugin, as JSON in bench-results/."""
    _install(session, ("-e", ".[test,baselines,ray]"), ("-e", "plugins/autosim_clevr[blender]"), UNET, YOLO, ARNOLD)
    os.makedirs("bench-results", exist_ok=True)
    # Whole processes: autosim --help / list / list --settings, and run's time to its first render.
    session.run("python", "benchmarks/startup.py", "--out", "bench-results/startup.json")
    session.run("python", "benchmarks/core.py", "--out", "bench-results/core.json")
    # The outer loop on problems with a known optimum: about 13 minutes of one core.
    session.run("python", "benchmarks/convergence.py", "--out", "bench-results/convergence.json")
    session.run("python", "benchmarks/executors.py", "--out", "bench-results/executors.json", "--blackbox",
                env=RAY_ENV)
    session.run("python", "plugins/autosim_clevr/bench.py", "--out", "bench-results/clevr.json")
    # The sizes of examples/clevr_unet.toml: 64x64 images, K = 32, 64 validation images.
    session.run("python", "plugins/autosim_unet/bench.py", "--out", "bench-results/unet.json", "--size", "64",
                "--batch", "32", "--train-batch-size", "16", "--val", "64", "--width", "16", "--depth", "2",
                "--cg-iters", "3")
    # The sizes of examples/shapes_yolo.toml for yolo (96 px, K = 64); Faster R-CNN at 160 px.
    session.run("python", "plugins/autosim_yolo/bench.py", "--out", "bench-results/yolo.json", "--size", "96",
                "--image-size", "96", "--width", "0.25", "--batch", "64", "--val", "64")
    # The hypergradient phase at K = 32, 128 px, one thread (docs/results.md, "Where the time goes").
    session.run("python", "plugins/autosim_yolo/bench.py", "--out", "bench-results/yolo-k32.json", "--models", "tiny",
                "--size", "128", "--image-size", "128", "--width", "0.25", "--batch", "32", "--val", "64",
                "--threads", "1")
    # The size of examples/placement_yolo.toml and benchmarks/detection.py: 64 x 64, one thread per run.
    session.run("python", "plugins/autosim_arnold/bench.py", "--out", "bench-results/arnold.json", "--size", "64",
                "--threads", "1")
