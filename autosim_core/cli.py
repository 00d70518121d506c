"""``autosim``: list installed plugins, run a config. Heavy imports wait until a command runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Learn the sampling distribution of a simulator (AutoSimulate).",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


@app.command("list")
def list_plugins(as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False) -> None:
    """Installed simulators, tasks, estimators and searchers, and plugins that failed to load."""
    from .plugins import load_registry

    registry = load_registry()
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
    resume: Annotated[bool, typer.Option("--resume", help="continue from the folder's last checkpoint")] = False,
) -> None:
    """Run one searcher; writes history.jsonl, checkpoints, psi.json, summary.json, curves.png."""
    from .config import ConfigError, load_config

    try:
        cfg = load_config(config)
        from .observers import ConsoleProgress, PlotCurves
        from .run import Run

        runner = Run(cfg, out or Path("runs") / config.stem, observers=(ConsoleProgress(), PlotCurves()),
                     config_text=config.read_text())
    except ConfigError as exc:
        for line in exc.lines:
            typer.echo(f"error: {line}" if line.startswith(str(config)) else f"error: {config}: {line}", err=True)
        raise typer.Exit(2) from None
    try:
        summary = runner.execute(resume=resume)
    except (FileExistsError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps({k: summary[k] for k in ("iterations", "images", "seconds") if k in summary}))


@app.command()
def compare(
    configs: Annotated[list[Path], typer.Argument(help="two or more run configs")],
    out: Annotated[Path, typer.Option("--out", help="folder for the runs and the comparison")] = Path("runs/compare"),
    resume: Annotated[bool, typer.Option("--resume", help="continue runs that were interrupted")] = False,
) -> None:
    """Run several configs one after another; writes comparison.md/.json and comparison.png."""
    from .compare import markdown_table, write_comparison
    from .config import ConfigError, load_config
    from .observers import ConsoleProgress, PlotCurves
    from .run import Run

    names = [c.stem for c in configs]
    if len(set(names)) != len(names):
        typer.echo("error: configs must have distinct file names (they name the run folders)", err=True)
        raise typer.Exit(2)
    runners = {}
    failed = False
    for path in configs:
        try:
            runners[path.stem] = Run(load_config(path), out / path.stem, config_text=path.read_text(),
                                     observers=(ConsoleProgress(), PlotCurves()))
        except ConfigError as exc:
            failed = True
            for line in exc.lines:
                typer.echo(f"error: {line}" if line.startswith(str(path)) else f"error: {path}: {line}", err=True)
    if failed:
        raise typer.Exit(2)
    for name, runner in runners.items():
        done = (runner.out_dir / "summary.json").exists()
        if done and resume:
            continue
        try:
            runner.execute(resume=resume and (runner.out_dir / "checkpoint.pt").exists())
        except (FileExistsError, FileNotFoundError) as exc:
            typer.echo(f"error: {name}: {exc}", err=True)
            raise typer.Exit(2) from None
    rows = write_comparison({name: r.out_dir for name, r in runners.items()}, out)
    typer.echo(markdown_table(rows), nl=False)


@app.command()
def generate(
    run_dir: Annotated[Path, typer.Argument(help="a run folder (uses its config.toml and final psi.json)")],
    count: Annotated[int, typer.Option("-n", "--count", min=1, help="examples to render")],
    out: Annotated[Path, typer.Option("-o", "--out", help="dataset folder to create")],
    seed: Annotated[int, typer.Option("--seed", help="seed of the sampled scenes")] = 0,
    batch: Annotated[int, typer.Option("--batch", min=1, help="scenes rendered at a time")] = 64,
) -> None:
    """Render a dataset from a run's learned psi: images/, masks/ (PNG) and annotations.jsonl."""
    from .config import ConfigError, load_config
    from .export import write_examples
    from .run import Run
    from .space import ParameterSpace

    if out.exists() and any(out.iterdir()):
        typer.echo(f"error: {out} is not empty", err=True)
        raise typer.Exit(2)
    try:
        psi_file = json.loads((run_dir / "psi.json").read_text())
        runner = Run(load_config(run_dir / "config.toml"), run_dir)
    except FileNotFoundError as exc:
        typer.echo(f"error: {run_dir} is not a finished run folder ({exc.filename} is missing)", err=True)
        raise typer.Exit(2) from None
    except ConfigError as exc:
        for line in exc.lines:
            typer.echo(f"error: {line}", err=True)
        raise typer.Exit(2) from None
    import torch

    space = ParameterSpace.from_dict(psi_file["space"])
    psi = space.init_psi()
    generator = torch.Generator().manual_seed(seed)
    written = 0
    while written < count:
        n = min(batch, count - written)
        _, examples = runner.render(space, psi, n, generator, list(range(written, written + n)))
        written += write_examples(examples, out, start=written)
    typer.echo(json.dumps({"examples": written, "out": str(out)}))


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
                                                     "sobol+reuse (default: all)")] = None,
    reuse_iterations: Annotated[int, typer.Option("--reuse-iterations", min=1)] = 3,
) -> None:
    """Measure the hypergradient's noise: K-scene estimates against a large-K reference."""
    from .config import ConfigError, load_config
    from .diagnose import OPTIONS, markdown
    from .diagnose import diagnose as measure

    try:
        cfg = load_config(config)
        report = measure(cfg, warmup=warmup, draws=draws, scenes=scenes, reference=reference,
                         estimators=tuple(estimator or [cfg.estimator.name]), options=tuple(option or OPTIONS),
                         reuse_iterations=reuse_iterations, progress=lambda line: typer.echo(line, err=True))
    except (ConfigError, ValueError) as exc:
        lines = exc.lines if isinstance(exc, ConfigError) else [str(exc)]
        for line in lines:
            typer.echo(f"error: {config}: {line}", err=True)
        raise typer.Exit(2) from None
    path = out or Path("runs") / "diagnose" / f"{config.stem}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    typer.echo(markdown(report), nl=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
