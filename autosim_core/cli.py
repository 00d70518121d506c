"""``autosim``: list installed plugins, run a config. Heavy imports wait until a command runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from .cli_errors import disk_error, error_log, unforeseen, unwritable_out

app = typer.Typer(help="Learn the sampling distribution of a simulator (AutoSimulate).",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


@app.command("list")
def list_plugins(
    name: Annotated[str | None, typer.Argument(help="with --settings: one plugin or config table (e.g. training)")
                    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    settings: Annotated[bool, typer.Option("--settings", help="the settings reference (markdown, as in "
                                           "docs/settings.md): every config table and plugin, or NAME's")] = False,
) -> None:
    """Installed simulators, tasks, estimators and searchers, and plugins that failed to load."""
    # Entry points name light modules (docs/plugins.md), so loading them all stays quick;
    # `--settings NAME` imports only the plugins called NAME.
    from .plugins import installed_names, load_registry

    if name is not None and not settings:
        typer.echo(f"error: NAME ({name!r}) goes with --settings: autosim list --settings {name}", err=True)
        raise typer.Exit(2)
    registry = load_registry(names=None if name is None else {name})
    if settings:
        from .settings_doc import TABLES, find_sections, settings_markdown

        if name is None:
            typer.echo(settings_markdown(registry), nl=False)
            return
        matches = find_sections(name, registry)
        if not matches:
            known = ", ".join(sorted({key for key, _, _ in TABLES} | {"test"} | {
                n for names in installed_names().values() for n in names}))
            typer.echo(f"error: {name!r} is no installed plugin or config table; known: {known}", err=True)
            raise typer.Exit(2)
        for section in matches:
            kind = "config table" if section.kind == "table" else section.kind[:-1]
            typer.echo(f"{kind} {name}\n{section.text.split(chr(10), 1)[1]}", nl=False)
        return
    if as_json:
        typer.echo(json.dumps(registry.as_json(), indent=2))
        return
    for kind, names in registry.plugins.items():
        typer.echo(f"{kind}: {', '.join(sorted(names)) or '(none)'}")
    for failure in registry.failures:
        typer.echo(f"failed to load {failure.group[:-1]} {failure.name!r} ({failure.target}): {failure.reason}",
                   err=True)


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="TOML file naming simulator, task, searcher, budget...")],
    out: Annotated[Path | None, typer.Option("--out", help="run folder (default: runs/<config name>)")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue from the folder's last checkpoint (start the "
                                         "run if the folder holds none yet)")] = False,
) -> None:
    """Run one searcher; writes history.jsonl, checkpoints, psi.json, summary.json, curves.png."""
    from .config import ConfigError

    out_dir = out or Path("runs") / config.stem
    problem = unwritable_out(out_dir)
    if problem:
        typer.echo(f"error: --out: {problem}", err=True)
        raise typer.Exit(2)
    try:
        from .observers import ConsoleProgress, PlotCurves
        from .run import open_run

        runner = open_run(config, out_dir, observers=(ConsoleProgress(), PlotCurves()))
        runner.config_text = config.read_text(encoding="utf-8")
    except ConfigError as exc:
        for line in exc.lines:
            typer.echo(f"error: {line}" if line.startswith(str(config)) else f"error: {config}: {line}", err=True)
        raise typer.Exit(2) from None
    except Exception as exc:  # a plugin that broke its contract while the run was set up
        raise unforeseen(exc, error_log(out_dir)) from None
    from .evaluations import EvaluationError
    from .executors import RenderError
    from .run import NonFiniteError
    from .rundir import DamagedHistoryError, RunFolderBusyError
    from .scenes import MemoryBudgetError

    (out_dir / "error.log").unlink(missing_ok=True)  # an earlier attempt's
    try:
        summary = runner.execute(resume=resume)
    except (FileExistsError, FileNotFoundError, NonFiniteError, DamagedHistoryError, RunFolderBusyError,
            MemoryBudgetError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except (RenderError, EvaluationError) as exc:  # failed after every retry: the message says how to resume
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except Exception as exc:  # a plugin that broke its contract, or a fault of the machine
        disk = disk_error(exc, out_dir)
        if disk is not None:
            typer.echo(f"error: {disk}; the run stopped at its last checkpoint: make room (or fix the folder), then "
                       f"continue it with --resume", err=True)
            raise typer.Exit(1) from None
        raise unforeseen(exc, error_log(out_dir)) from None
    finally:
        runner.close()
    typer.echo(json.dumps({k: summary[k] for k in ("iterations", "images", "seconds") if k in summary}))


@app.command()
def compare(
    configs: Annotated[list[Path], typer.Argument(help="two or more run configs")],
    out: Annotated[Path, typer.Option("--out", help="folder for the runs and the comparison")] = Path("runs/compare"),
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="runs per config, with seeds seed, seed+1, ...")] = 1,
    budget_images: Annotated[int | None, typer.Option("--budget-images", min=1,
                                                      help="replace every config's [budget]: images")] = None,
    budget_seconds: Annotated[float | None, typer.Option("--budget-seconds",
                                                         help="replace every config's [budget]: seconds")] = None,
    budget_iterations: Annotated[int | None, typer.Option("--budget-iterations", min=1,
                                                          help="replace every config's [budget]: iterations")] = None,
    threshold_from: Annotated[str | None, typer.Option(
        "--threshold-from", help="config name whose best val metric per seed is the threshold "
        "(default: the strongest baseline)")] = None,
    oracle: Annotated[str | None, typer.Option(
        "--oracle", help="config name of the oracle (default: detected)")] = None,
    initial: Annotated[str | None, typer.Option(
        "--initial", help="config name of the initial reference (default: detected)")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue interrupted runs, skip finished ones")] = False,
    executor: Annotated[str, typer.Option(
        "--executor", help="where the runs go: inline (one after another, in this process), processes "
        "(local worker processes) or ray (Ray tasks)")] = "inline",
    workers: Annotated[int | None, typer.Option(
        "--workers", min=1, help="runs at once (processes, ray; default: the CPUs of this machine or of "
        "the Ray cluster)")] = None,
    address: Annotated[str | None, typer.Option(
        "--address", help="Ray cluster to join (ray only; default: start a local Ray)")] = None,
    final_training: Annotated[bool, typer.Option(
        "--final-training", help="score every run by fresh models trained on the psi it hands over at each "
        "fraction of final_training.at (autosim train --snapshots), the same recipe for every method; their "
        "metric becomes the headline")] = False,
) -> None:
    """Run several configs over seeds under one budget; writes comparison.md/.json and comparison.png.

    Runs go to OUT/<config name>/seed-<i>, seed i using the config's seed + i (training scenes
    and initial weights; validation and test sets stay the same). With --executor processes or
    ray they run concurrently; a run that fails does not stop the others.
    """
    from .compare import seeded_config_text, write_comparison
    from .config import ConfigError, parse_config

    def fail(message: str) -> typer.Exit:
        typer.echo(f"error: {message}", err=True)
        return typer.Exit(2)

    names = [c.stem for c in configs]
    if len(configs) < 2:
        raise fail(f"compare needs two or more configs (got {len(configs)}); one config runs with autosim run, "
                   "over seeds with autosim compare A.toml B.toml --seeds N")
    if len(set(names)) != len(names):
        raise fail("configs must have distinct file names (they name the run folders)")
    budgets = {flag: value for flag, value in (("--budget-images", budget_images), ("--budget-seconds", budget_seconds),
                                                ("--budget-iterations", budget_iterations)) if value is not None}
    if len(budgets) > 1:
        raise fail(f"{' and '.join(budgets)} exclude each other: give one budget")
    if budget_seconds is not None and budget_seconds <= 0:
        raise fail(f"--budget-seconds must be positive (got {budget_seconds})")
    budget = {flag.removeprefix("--budget-"): value for flag, value in budgets.items()} or None
    for flag, name in (("--threshold-from", threshold_from), ("--oracle", oracle), ("--initial", initial)):
        if name is not None and name not in names:
            raise fail(f"{flag} {name!r} names no config; configs: {', '.join(names)}")
    if oracle is not None and oracle == initial:
        raise fail(f"--oracle and --initial name the same config {oracle!r}")
    from .compare_runs import EXECUTORS, RunJob, run_jobs
    from .executors import ray_available

    if executor not in EXECUTORS:
        raise fail(f"--executor: unknown executor {executor!r}; allowed: {', '.join(EXECUTORS)}")
    if workers is not None and executor == "inline":
        raise fail("--workers needs --executor processes or ray (inline runs one run at a time)")
    if address is not None and executor != "ray":
        raise fail(f"--address is only used by --executor ray (executor is {executor!r})")
    if executor == "ray" and not ray_available():
        raise fail("--executor ray needs Ray: pip install 'autosim-core[ray]'")

    from .plugins import load_registry
    from .run import Run, open_run

    registry = load_registry()
    runners: dict[str, dict[int, Run]] = {}
    errors: list[str] = []
    for path in configs:
        try:
            base = open_run(path, out / path.stem / "seed-0", registry=registry).config
            text = path.read_text(encoding="utf-8")
            collisions = [f"{path}: seed {base.seed + i} (seed + {i}, from --seeds {seeds}) equals {key}.seed; "
                          f"move {key}.seed outside {base.seed}..{base.seed + seeds - 1} or run fewer seeds"
                          for i in range(seeds) for key in ("validation", "test")
                          if (data := getattr(base, key)) is not None and data.source == "simulator"
                          and data.seed == base.seed + i]
            if collisions:
                errors += collisions
                continue
            runners[path.stem] = {}
            for i in range(seeds):
                data = base.model_dump()
                data["seed"] = base.seed + i
                if budget is not None:
                    data["budget"] = budget
                cfg = parse_config(data)
                runners[path.stem][i] = Run(cfg, out / path.stem / f"seed-{i}", registry=registry,
                                            config_text=seeded_config_text(text, cfg.seed, budget))
        except ConfigError as exc:
            errors += [line if line.startswith(str(path)) else f"{path}: {line}" for line in exc.lines]
    if not resume:
        errors += [f"{r.out_dir} already holds a run; pass --resume to continue it or choose another --out"
                   for seeds_ in runners.values() for r in seeds_.values()
                   if (r.out_dir / "history.jsonl").exists() or (r.out_dir / "checkpoint.pt").exists()]
    if final_training and runners:
        recipes = {name: json.dumps(_final_recipe(next(iter(by_seed.values())).config), sort_keys=True)
                   for name, by_seed in runners.items()}
        if len(set(recipes.values())) > 1:
            errors.append("--final-training: the configs' [final_training] (with [training] under it) differ; one "
                          "recipe scores every method: " + "; ".join(f"{n}: {r}" for n, r in recipes.items()))
    if errors:
        for line in errors:
            typer.echo(f"error: {line}", err=True)
        raise typer.Exit(2)

    # A finished run (summary.json) is kept; any other folder holding a run is resumed, even one
    # stopped during set-up, before its first checkpoint.
    jobs = [RunJob(name, i, runner.config.model_dump(), str(runner.out_dir), runner.config_text or "",
                   resume=resume and any((runner.out_dir / f).exists() for f in ("config.json", "checkpoint.pt")),
                   live_progress=executor == "inline")
            for name, by_seed in runners.items() for i, runner in by_seed.items()
            if not (resume and (runner.out_dir / "summary.json").exists())]
    failures = [(job, error) for job, error in zip(jobs, run_jobs(jobs, executor, workers, address, registry),
                                                   strict=True) if error is not None]
    real_reference: dict[int, Path] = {}
    if final_training and not failures:
        from .compare_runs import FinalJob
        from .rundir import FINAL

        finals: list[Any] = [FinalJob(name, i, str(r.out_dir), str(r.out_dir / FINAL),
                                      final_training=r.config.final_training.model_dump())
                             for name, by_seed in runners.items() for i, r in by_seed.items()]
        first = next(iter(runners.values()))
        if first[0].config.validation is not None and first[0].config.validation.source == "folder":
            # Real validation data: the model trained on it alone is the reference a small real set gives.
            real_reference = {i: out / "trained-on-validation" / f"seed-{i}" for i in first}
            finals += [FinalJob("trained-on-validation", i, str(r.out_dir), str(real_reference[i]), on="validation",
                                final_training=r.config.final_training.model_dump())
                       for i, r in first.items()]
        failures = [(job, error) for job, error in zip(finals, run_jobs(finals, executor, workers, address, registry),
                                                       strict=True) if error is not None]
        jobs = finals
    if failures:
        for job, error in failures:
            typer.echo(f"error: {job.label}: {error}", err=True)
        typer.echo(f"error: {len(failures)} of {len(jobs)} run(s) failed, so no comparison was written; the "
                   "others are kept: fix the cause and continue with --resume", err=True)
        raise typer.Exit(1)
    write_comparison({name: {i: r.out_dir for i, r in by_seed.items()} for name, by_seed in runners.items()},
                     out, threshold_from=threshold_from, oracle=oracle, initial=initial,
                     real_reference=real_reference or None)
    typer.echo((out / "comparison.md").read_text(), nl=False)


@app.command()
def train(
    run_dir: Annotated[Path, typer.Argument(help="a finished run folder")],
    images: Annotated[int | None, typer.Option("-n", "--images", min=1, help="images rendered from psi "
                                               "(default: the run's final_training.images)")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="training epochs (default: "
                                               "final_training.epochs, else training.epochs)")] = None,
    seeds: Annotated[int | None, typer.Option("--seeds", min=1, help="fresh models, one per seed "
                                              "(default: final_training.seeds)")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="folder for final.json and model.pt "
                                             "(default: RUN/final)")] = None,
    snapshots: Annotated[bool, typer.Option("--snapshots", help="also score every psi of snapshots.json "
                                            "(the psi-quality curve)")] = False,
    on: Annotated[str, typer.Option("--on", help="renders (of the run's psi) or validation (the validation set "
                                    "itself: the reference a small real set gives)")] = "renders",
) -> None:
    """Train a fresh model on renders of the psi a run hands over; writes final.json and model.pt."""
    from .config import ConfigError

    if on not in ("renders", "validation"):
        typer.echo(f"error: --on: unknown choice {on!r}; allowed: renders, validation", err=True)
        raise typer.Exit(2)
    if on == "validation" and snapshots:
        typer.echo("error: --snapshots scores the run's psi; it does not go with --on validation", err=True)
        raise typer.Exit(2)
    from .final import FinalTrainer, FinalTrainingError

    trainer = None
    try:
        if (run_dir / "psi.json").exists():  # what is wrong with a damaged one (the trainer only indexes it)
            _read_psi_file(run_dir)
        trainer = FinalTrainer(run_dir, images=images, epochs=epochs, seeds=seeds)
        report = trainer.score(out, snapshots=snapshots, on=on,  # type: ignore[arg-type]
                               progress=lambda line: typer.echo(line, err=True))
    except FinalTrainingError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except ConfigError as exc:
        for line in exc.lines:
            typer.echo(f"error: {run_dir / 'config.json'}: {line}", err=True)
        raise typer.Exit(2) from None
    finally:
        if trainer is not None:
            trainer.close()
    final = report["final"]
    typer.echo(json.dumps({"psi": final["label"], "images": report["images"], "seeds": report["seeds"],
                           "val_metric": final["val_metric"], "test_metric": final["test_metric"],
                           "out": str(out or run_dir / "final")}))


def _final_recipe(config: Any) -> dict[str, Any]:
    """What scores a run's psi under ``--final-training``: images, seeds and the training recipe."""
    final = config.final_training
    return {"images": final.images, "seeds": final.seeds, "seed": final.seed, "at": final.at,
            "recipe": final.recipe(config.training).model_dump(mode="json")}


@app.command()
def generate(
    run_dir: Annotated[Path, typer.Argument(help="a run folder (uses its config.toml and final psi.json)")],
    count: Annotated[int, typer.Option("-n", "--count", min=1, help="examples to render")],
    out: Annotated[Path, typer.Option("-o", "--out", help="dataset folder to create (new or empty)")],
    fmt: Annotated[str, typer.Option("--format", help="png (images/, masks/, annotations.jsonl), "
                                     "coco or bop (detection boxes)")] = "png",
    seed: Annotated[int, typer.Option("--seed", help="seed of the sampled scenes")] = 0,
    batch: Annotated[int, typer.Option("--batch", min=1, help="scenes rendered at a time")] = 64,
) -> None:
    """Render a dataset from a run's learned psi, with manifest.json (psi, seeds, versions)."""
    import shutil

    from .checks import is_psi_file
    from .config import ConfigError, load_config
    from .export import FORMATS, DatasetWriter
    from .final import FinalTrainingError, run_config
    from .run import Run

    def fail(message: str) -> typer.Exit:
        typer.echo(f"error: {message}", err=True)
        return typer.Exit(2)

    if fmt not in FORMATS:
        raise fail(f"--format: unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise fail(f"--out: {out} is not an empty folder; choose a new one")
    problem = unwritable_out(out)
    if problem:
        raise fail(f"--out: {problem}")
    try:
        psi_file = _read_psi_file(run_dir)
        # config.json: the resolved config, whose data folders are absolute (config.toml's
        # relative paths would be read against the run folder); config.toml where it is missing.
        run_config_ = (run_config(run_dir) if (run_dir / "config.json").exists() else
                       load_config(run_dir / "config.toml"))
        if is_psi_file(run_config_.simulator.start):
            # The scenes come from this run's own psi.json; the one it started from need not be found again.
            run_config_.simulator.start = None
        runner = Run(run_config_, run_dir)
    except FinalTrainingError as exc:
        raise fail(str(exc)) from None
    except ConfigError as exc:
        for line in exc.lines:
            typer.echo(f"error: {run_dir / 'config.json'}: {line}", err=True)
        raise typer.Exit(2) from None
    except Exception as exc:  # a plugin that broke its contract while the run was set up
        raise unforeseen(exc, None) from None
    try:
        DatasetWriter(out, fmt, runner.labels)
    except ValueError as exc:
        raise fail(f"--format: {exc}") from None
    # Rendered into a folder beside --out and moved there whole: a failed or killed attempt
    # leaves --out as it was, and the next attempt clears what it left.
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        summary = _generate(runner, psi_file, DatasetWriter(staging, fmt, runner.labels), run_dir, count, fmt,
                            seed, batch)
        if out.exists():
            out.rmdir()  # empty (checked above)
        staging.rename(out)
    except _NotImages as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise fail(f"{run_dir}: {exc}") from None
    except Exception as exc:  # a plugin that broke its contract, or a fault of the machine
        shutil.rmtree(staging, ignore_errors=True)
        disk = disk_error(exc, out)
        if disk is not None:
            typer.echo(f"error: {disk}", err=True)
            raise typer.Exit(1) from None
        raise unforeseen(exc, None) from None
    finally:
        runner.close()
    typer.echo(json.dumps({**summary, "out": str(out)}))


class _NotImages(ValueError):
    """The run's simulator renders examples that are not images (the toy's points)."""


def _read_psi_file(run_dir: Path) -> dict[str, Any]:
    """A finished run's psi.json, with its ``space`` and ``psi`` (a ``FinalTrainingError`` says what is wrong)."""
    from .final import FinalTrainingError

    path = run_dir / "psi.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FinalTrainingError(f"{run_dir} is not a finished run folder ({path} is missing)") from None
    except OSError as exc:
        raise FinalTrainingError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise FinalTrainingError(f"{path}: not JSON ({exc})") from None
    missing = [key for key in ("space", "psi") if not isinstance(data, dict) or not isinstance(data.get(key), dict)
               or not data[key]]
    if missing:
        raise FinalTrainingError(f"{path}: no {' and no '.join(repr(k) for k in missing)} table (a finished "
                                 "run's psi.json has both)")
    return data


def _generate(runner: Any, psi_file: dict[str, Any], writer: Any, run_dir: Path, count: int, fmt: str, seed: int,
              batch: int) -> dict[str, Any]:
    """Renders ``count`` examples of the run's psi into ``writer``'s folder, then its manifest.json."""
    import platform

    import torch

    from .export import atomic_write, package_versions
    from .space import ParameterSpace

    space = ParameterSpace.from_dict(psi_file["space"])
    psi = space.init_psi()
    generator = torch.Generator().manual_seed(seed)
    seeds: list[Any] = []
    writer.out.mkdir(parents=True)
    while writer.count < count:
        n = min(batch, count - writer.count)
        _, examples = runner.render(space, psi, n, generator, list(range(writer.count, writer.count + n)))
        image = examples[0].image if examples else None
        if not isinstance(image, torch.Tensor) or image.dim() != 3:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise _NotImages(f"simulator {runner.config.simulator.name!r} renders no images (an example's image is "
                             f"{shape}, not (C, H, W)); generate writes image datasets")
        seeds += [(e.scene or {}).get("seed") for e in examples]
        writer.write(examples)
    writer.close()
    simulator_dist = runner.simulator_version.split(" ")[0] if runner.simulator_version else ""
    manifest = {
        "format": fmt, "examples": writer.count, "seed": seed, "run": str(run_dir.resolve()),
        "simulator": {"name": runner.config.simulator.name, "distribution": runner.simulator_version,
                      "settings": runner.settings_json()["simulator"]["settings"]},
        "psi": psi_file["psi"], "psi_raw": psi_file.get("raw"), "scene_seeds": seeds,
        "classes": writer.class_ids() if runner.labels else None,
        "versions": {"python": platform.python_version(),
                     **package_versions("autosim-core", *([simulator_dist] if simulator_dist else []),
                                        "torch", "numpy", "pillow")},
    }
    text = json.dumps(manifest, indent=2, default=str) + "\n"
    atomic_write(writer.out / "manifest.json", lambda f: f.write(text.encode()))
    return {"examples": writer.count, "format": fmt}


@app.command()
def diagnose(
    config: Annotated[Path, typer.Argument(help="an AutoSimulate run config")],
    out: Annotated[Path | None, typer.Option("--out", help="JSON report (default: runs/diagnose/<config name>.json)")
                   ] = None,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="iterations of the config before measuring")] = 10,
    draws: Annotated[int, typer.Option("--draws", min=2, help="independent K-scene estimates per option")] = 8,
    scenes: Annotated[int | None, typer.Option("-k", "--scenes", min=2, help="K (default: the config's)")] = None,
    reference: Annotated[int, typer.Option("--reference", min=2, help="scenes of the reference estimate")] = 1024,
    estimator: Annotated[list[str] | None, typer.Option("--estimator", help="repeatable (default: the config's)")
                         ] = None,
    option: Annotated[list[str] | None, typer.Option("--option", help="repeatable: mean, loo, sobol, reuse, "
                                                     "sobol+reuse, sobol+pathwise, sobol+reuse+pathwise (default: "
                                                     "all; the pathwise ones where the simulator has gradients)")
                      ] = None,
    reuse_iterations: Annotated[int, typer.Option("--reuse-iterations", min=1)] = 3,
) -> None:
    """Measure the hypergradient's noise: K-scene estimates against a large-K reference."""
    import tempfile

    from .config import ConfigError
    from .diagnose import diagnose as measure
    from .diagnose import markdown
    from .run import open_run
    from .rundir import atomic_write

    path = out or Path("runs") / "diagnose" / f"{config.stem}.json"
    problem = unwritable_out(path.parent)  # before the work, which takes minutes
    if problem:
        typer.echo(f"error: --out: {problem}", err=True)
        raise typer.Exit(2)
    try:
        with tempfile.TemporaryDirectory() as scratch:  # the same checks as autosim run, in one pass
            cfg = open_run(config, Path(scratch) / "run").config
        report = measure(cfg, warmup=warmup, draws=draws, scenes=scenes, reference=reference,
                         estimators=tuple(estimator or [cfg.estimator.name]), options=tuple(option) if option else None,
                         reuse_iterations=reuse_iterations, progress=lambda line: typer.echo(line, err=True))
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(report, indent=2) + "\n"
        atomic_write(path, lambda f: f.write(text.encode()))
    except (ConfigError, ValueError) as exc:
        lines = exc.lines if isinstance(exc, ConfigError) else [str(exc)]
        for line in lines:
            typer.echo(f"error: {line}" if line.startswith(str(config)) else f"error: {config}: {line}", err=True)
        raise typer.Exit(2) from None
    except Exception as exc:  # a plugin that broke its contract, or a fault of the machine
        disk = disk_error(exc, path)
        if disk is not None:
            typer.echo(f"error: {disk}", err=True)
            raise typer.Exit(1) from None
        raise unforeseen(exc, None) from None
    typer.echo(markdown(report), nl=False)


cache_app = typer.Typer(help="The cache of rendered validation and test sets.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")

CacheDir = Annotated[Path | None, typer.Option(
    "--dir", help="cache folder (default: $AUTOSIM_CACHE, else $XDG_CACHE_HOME/autosim, else ~/.cache/autosim; "
                  "a config's cache_dir when it sets one)")]
CacheSimulator = Annotated[str | None, typer.Option("--simulator", help="only the sets of this simulator")]


@cache_app.command("list")
def cache_list(cache_dir: CacheDir = None, simulator: CacheSimulator = None) -> None:
    """Cached evaluation sets: simulator, set, size and file."""
    from .cache import cached_sets, default_cache_dir

    folder = cache_dir or default_cache_dir()
    entries = cached_sets(folder, simulator)
    for entry in entries:
        typer.echo(f"{entry.simulator}\t{entry.key}\t{entry.size / 2**20:.1f} MiB\t{entry.path.name}")
    total = sum(e.size for e in entries)
    typer.echo(f"{len(entries)} cached set(s), {total / 2**20:.1f} MiB in {folder}", err=True)


@cache_app.command("clear")
def cache_clear(cache_dir: CacheDir = None, simulator: CacheSimulator = None) -> None:
    """Remove cached evaluation sets (runs render them again when they need them)."""
    from .cache import clear_cache, default_cache_dir

    folder = cache_dir or default_cache_dir()
    removed = clear_cache(folder, simulator)
    typer.echo(f"removed {len(removed)} cached set(s), {sum(e.size for e in removed) / 2**20:.1f} MiB from {folder}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
