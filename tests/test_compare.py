"""autosim compare: statistics over seeds from run folders written by hand, and the command itself."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from autosim_core.cli import app
from autosim_core.compare import (
    detect_references,
    load_records,
    method_role,
    seeded_config_text,
    summarize,
    write_comparison,
)
from autosim_core.compare_plots import banded_curves, running_best

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

Row = tuple[int, float, float | None]


def config(searcher: str = "autosimulate", start: str | None = "initial", preset: str | None = "target",
           seed: int = 0) -> dict[str, Any]:
    return {"seed": seed, "searcher": {"name": searcher, "settings": {}},
            "estimator": {"name": "quadratic"} if searcher == "autosimulate" else None,
            "simulator": {"name": "toy-gaussians", "start": start, "overrides": {}, "settings": {}},
            "validation": {"source": "simulator", "preset": preset, "overrides": {}, "count": 10, "seed": 1001},
            "budget": {"iterations": 3, "images": None, "seconds": None}}


def write_run(folder: Path, rows: list[Row], *, test: float | None = None, **cfg: Any) -> Path:
    """A finished run folder: history rows (images, seconds, val_metric) and the summary they imply."""
    folder.mkdir(parents=True)
    history = [{"iteration": n + 1, "images": images, "seconds": seconds, "val_metric": metric, "psi": {}}
               for n, (images, seconds, metric) in enumerate(rows)]
    (folder / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    best: dict[str, Any] = {}
    for r in history:
        if r["val_metric"] is not None and (not best or r["val_metric"] > best["val_metric"]):
            best = {k: r[k] for k in ("iteration", "images", "seconds", "val_metric")}
    summary: dict[str, Any] = {"iterations": len(rows), "images": rows[-1][0], "seconds": rows[-1][1],
                               "best": best, "val": {"metric": rows[-1][2]}, "psi": {}}
    if test is not None:
        summary["test"] = {"metric": test}
    (folder / "config.json").write_text(json.dumps(config(**cfg)))
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def method_entry(comparison: dict[str, Any], name: str) -> dict[str, Any]:
    return next(m for m in comparison["methods"] if m["method"] == name)


def run_entry(comparison: dict[str, Any], name: str, seed: int) -> dict[str, Any]:
    return next(r for r in comparison["runs"] if r["run"] == name and r["seed_index"] == seed)


@pytest.fixture
def three_methods(tmp_path: Path) -> dict[str, dict[int, Path]]:
    """autosim (two seeds), a random-search baseline and a fixed reference, with known histories."""
    runs: dict[str, dict[int, Path]] = {"autosim": {}, "random": {}, "fixed_initial": {}}
    runs["autosim"][0] = write_run(tmp_path / "autosim/seed-0", [
        (100, 10.0, None), (200, 20.0, 0.50), (300, 30.0, 0.60), (400, 40.0, 0.70), (500, 50.0, 0.65)], test=0.66)
    runs["autosim"][1] = write_run(tmp_path / "autosim/seed-1", [
        (100, 12.0, 0.40), (200, 24.0, 0.52), (300, 36.0, 0.55)], test=0.50)
    runs["random"][0] = write_run(tmp_path / "random/seed-0", [
        (250, 5.0, 0.55), (500, 9.0, 0.60), (750, 14.0, 0.58)], test=0.59, searcher="random")
    runs["random"][1] = write_run(tmp_path / "random/seed-1", [
        (250, 6.0, 0.56), (500, 11.0, 0.54)], test=0.52, searcher="random")
    runs["fixed_initial"][0] = write_run(tmp_path / "fixed_initial/seed-0", [
        (100, 3.0, 0.30), (200, 6.0, 0.35)], test=0.33, searcher="fixed")
    runs["fixed_initial"][1] = write_run(tmp_path / "fixed_initial/seed-1", [
        (100, 3.5, 0.31), (200, 7.0, 0.34)], test=0.32, searcher="fixed")
    return runs


def test_threshold_is_the_strongest_baseline_and_is_reached_at_the_first_row_above_it(
        three_methods: dict[str, dict[int, Path]]) -> None:
    comparison = summarize(load_records(three_methods))
    assert comparison["threshold"]["method"] == "random"
    assert comparison["threshold"]["per_seed"] == {"0": 0.60, "1": 0.56}
    # seed 0: 0.60 is met (not exceeded) first at 300 images / 30 s; later rows are higher still
    seed0 = run_entry(comparison, "autosim", 0)
    assert (seed0["images_to_threshold"], seed0["seconds_to_threshold"]) == (300, 30.0)
    # seed 1: 0.55 stays below 0.56
    seed1 = run_entry(comparison, "autosim", 1)
    assert seed1["threshold_reached"] is False
    assert seed1["images_to_threshold"] is None and seed1["seconds_to_threshold"] is None
    # the threshold's own method reaches it at its best row
    assert run_entry(comparison, "random", 1)["images_to_threshold"] == 250


def test_a_run_that_never_reaches_the_threshold_is_excluded_and_counted(
        three_methods: dict[str, dict[int, Path]], tmp_path: Path) -> None:
    comparison = write_comparison(three_methods, tmp_path / "out")
    autosim = method_entry(comparison, "autosim")
    assert autosim["threshold_reached"] == {"reached": 1, "of": 2}
    assert autosim["images_to_threshold"] == {"mean": 300.0, "std": None, "n": 1}
    fixed = method_entry(comparison, "fixed_initial")
    assert fixed["threshold_reached"] == {"reached": 0, "of": 2}
    assert fixed["images_to_threshold"]["mean"] is None
    table = (tmp_path / "out/comparison.md").read_text()
    autosim_line = next(line for line in table.splitlines() if line.startswith("| autosim |"))
    assert "300 (1/2)" in autosim_line and "30.0 (1/2)" in autosim_line
    fixed_line = next(line for line in table.splitlines() if line.startswith("| fixed_initial |"))
    assert fixed_line.count("not reached (0/2)") == 2
    assert "| 0 (" not in fixed_line
    assert "`random` (strongest baseline)" in table and "seed 0: 0.6000, seed 1: 0.5600" in table
    assert json.loads((tmp_path / "out/comparison.json").read_text()) == json.loads(json.dumps(comparison))
    assert (tmp_path / "out/comparison.png").stat().st_size > 0


def test_mean_and_std_over_seeds_match_numpy(three_methods: dict[str, dict[int, Path]]) -> None:
    autosim = method_entry(summarize(load_records(three_methods)), "autosim")
    expected = {"best_val_metric": [0.70, 0.55], "test_metric": [0.66, 0.50], "images": [500, 300],
                "seconds": [50.0, 36.0], "images_to_best": [400, 300], "seconds_to_best": [40.0, 36.0]}
    for key, values in expected.items():
        assert autosim[key]["n"] == 2
        assert autosim[key]["mean"] == pytest.approx(np.mean(values)), key
        assert autosim[key]["std"] == pytest.approx(np.std(values, ddof=1)), key


def test_gap_closed_between_the_initial_reference_and_the_oracle(three_methods: dict[str, dict[int, Path]],
                                                                 tmp_path: Path) -> None:
    runs = dict(three_methods)
    runs["oracle"] = {
        0: write_run(tmp_path / "oracle/seed-0", [(100, 3.0, 0.80), (200, 6.0, 0.90)], test=0.85,
                     searcher="fixed", start="target"),
        1: write_run(tmp_path / "oracle/seed-1", [(100, 3.0, 0.74), (200, 6.0, 0.70)], test=0.80,
                     searcher="fixed", start="target"),
    }
    comparison = summarize(load_records(runs))
    assert comparison["references"]["oracle"] == "oracle"
    assert comparison["references"]["initial"] == "fixed_initial"
    autosim = method_entry(comparison, "autosim")
    val = [(0.70 - 0.35) / (0.90 - 0.35), (0.55 - 0.34) / (0.74 - 0.34)]
    test = [(0.66 - 0.33) / (0.85 - 0.33), (0.50 - 0.32) / (0.80 - 0.32)]
    assert autosim["gap_closed_val"]["mean"] == pytest.approx(sum(val) / 2)
    assert autosim["gap_closed_val"]["std"] == pytest.approx(np.std(val, ddof=1))
    assert autosim["gap_closed_test"]["mean"] == pytest.approx(sum(test) / 2)
    assert run_entry(comparison, "oracle", 1)["gap_closed_val"] == pytest.approx(1.0)
    assert run_entry(comparison, "fixed_initial", 0)["gap_closed_test"] == pytest.approx(0.0)
    # the baseline still sets the threshold: the oracle is a ceiling, not a method
    assert comparison["threshold"]["method"] == "random"


def test_roles_from_the_run_configs() -> None:
    assert method_role(config("autosimulate")) == "method"
    assert method_role(config("bayesian")) == "baseline"
    assert method_role(config("fixed", start="initial")) == "reference"
    assert method_role(config("fixed", start="target")) == "oracle"
    assert method_role(config("fixed", start="target", preset="other")) == "reference"
    oracle_with_overrides = config("fixed", start="target")
    oracle_with_overrides["simulator"]["overrides"] = {"mean": {"value": 1.0}}
    assert method_role(oracle_with_overrides) == "reference"
    # which parameters are learned does not change what a fixed run samples
    oracle_learning_less = config("fixed", start="target")
    oracle_learning_less["simulator"]["overrides"] = {"shape": {"learn": False}}
    assert method_role(oracle_learning_less) == "oracle"
    oracle_learning_less["simulator"]["overrides"] = {"shape": {"learn": False, "std": 2.0}}
    assert method_role(oracle_learning_less) == "reference"
    no_validation = config("fixed", start="target")
    no_validation["validation"] = None
    assert method_role(no_validation) == "reference"


def test_references_are_detected_or_named() -> None:
    roles = {"a": "method", "o": "oracle", "i": "reference"}
    refs = detect_references(roles)
    assert (refs.oracle, refs.initial, refs.notes) == ("o", "i", [])
    two = detect_references({**roles, "j": "reference"})
    assert two.initial is None and "several initial candidates (i, j)" in two.notes[0]
    assert detect_references({**roles, "j": "reference"}, initial="j").initial == "j"
    assert detect_references(roles, oracle="a").oracle == "a"
    missing = detect_references({"a": "method", "i": "reference"})
    assert missing.oracle is None and "no oracle" in missing.notes[0]
    with pytest.raises(ValueError, match="no such method"):
        detect_references(roles, oracle="nope")


def test_threshold_without_baselines_and_when_named(tmp_path: Path) -> None:
    runs = {
        "auto": {0: write_run(tmp_path / "auto", [(10, 1.0, 0.5), (20, 2.0, 0.7)])},
        "fixed_initial": {0: write_run(tmp_path / "ref", [(10, 1.0, 0.4), (20, 2.0, 0.6)], searcher="fixed")},
        "oracle": {0: write_run(tmp_path / "oracle", [(10, 1.0, 0.9)], searcher="fixed", start="target")},
    }
    comparison = summarize(load_records(runs))
    assert comparison["threshold"]["method"] == "auto"
    assert "no baseline" in comparison["threshold"]["rule"]
    assert run_entry(comparison, "fixed_initial", 0)["threshold_reached"] is False
    named = summarize(load_records(runs), threshold_from="fixed_initial")
    assert named["threshold"] == {"method": "fixed_initial", "rule": "named by --threshold-from",
                                  "per_seed": {"0": 0.6}, "mean": 0.6}
    assert run_entry(named, "auto", 0)["images_to_threshold"] == 20
    with pytest.raises(ValueError, match="no such method"):
        summarize(load_records(runs), threshold_from="nope")


def test_banded_curves_hold_each_seeds_running_best() -> None:
    seed0 = running_best([{"images": 10, "val_metric": 0.2}, {"images": 20, "val_metric": 0.1},
                          {"images": 30, "val_metric": 0.5}], "images")
    assert seed0 == ([10.0, 20.0, 30.0], [0.2, 0.2, 0.5])
    seed1 = ([15.0, 25.0], [0.4, 0.6])
    grid, mean, low, high = banded_curves([seed0, seed1])
    # from 15 (both seeds have a value): seed 0 is 0.2, 0.2, 0.5 at 15, 20, 30; seed 1 is 0.4, 0.4, 0.6, 0.6
    assert grid == [15.0, 20.0, 25.0, 30.0]
    assert mean == pytest.approx([0.3, 0.3, 0.4, 0.55])
    assert low == pytest.approx([0.2, 0.2, 0.2, 0.5])
    assert high == pytest.approx([0.4, 0.4, 0.6, 0.6])


def test_seeded_config_text_reruns_that_seed_and_budget() -> None:
    text = (EXAMPLES / "toy.toml").read_text()
    edited = seeded_config_text(text, 3, {"images": 500})
    expected = tomllib.loads(text) | {"seed": 3, "budget": {"images": 500}}
    assert tomllib.loads(edited) == expected
    assert edited.splitlines()[0] == text.splitlines()[0]
    assert seeded_config_text(text, 0) == text
    inline = 'budget = { iterations = 2 }\n[simulator]\nname = "a"\n'
    fallback = seeded_config_text(inline, 1, {"seconds": 2.5})
    assert fallback.startswith("# ") and fallback.endswith(inline)


# --------------------------------------------------------------------------------- the command ---
def small_toy(name: str, folder: Path, cache: Path, seed: int = 0) -> Path:
    text = (EXAMPLES / name).read_text().replace("count = 500", "count = 50").replace("seed = 0", f"seed = {seed}")
    path = folder / name
    path.write_text(f'cache_dir = "{cache}"\n' + text)
    return path


@pytest.mark.parametrize(("args", "message"), [
    (["--budget-images", "100", "--budget-seconds", "5"], "--budget-images and --budget-seconds exclude each other"),
    (["--budget-iterations", "2", "--budget-images", "100"], "exclude each other"),
    (["--seeds", "0"], "--seeds"),
    (["--threshold-from", "nope"], "--threshold-from 'nope' names no config"),
    (["--oracle", "toy", "--initial", "toy"], "the same config"),
    (["--executor", "threads"], "--executor: unknown executor 'threads'; allowed: inline, processes, ray"),
    (["--workers", "2"], "--workers needs --executor processes or ray"),
    (["--executor", "processes", "--address", "auto"], "--address is only used by --executor ray"),
])
def test_compare_option_errors(args: list[str], message: str, tmp_path: Path, cache_dir: Path) -> None:
    configs = [str(small_toy(n, tmp_path, cache_dir)) for n in ("toy.toml", "toy_fixed.toml")]
    result = CliRunner().invoke(app, ["compare", *configs, "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "out").exists()


def test_offset_seed_colliding_with_the_validation_seed_is_an_error_before_any_run(tmp_path: Path,
                                                                                   cache_dir: Path) -> None:
    configs = [str(small_toy("toy.toml", tmp_path, cache_dir, seed=999)),
               str(small_toy("toy_fixed.toml", tmp_path, cache_dir))]
    result = CliRunner().invoke(app, ["compare", *configs, "--out", str(tmp_path / "out"), "--seeds", "3"])
    assert result.exit_code == 2
    assert "seed 1001 (seed + 2, from --seeds 3) equals validation.seed" in result.stderr
    assert not (tmp_path / "out").exists()


def test_compare_over_two_seeds_end_to_end(tmp_path: Path, cache_dir: Path) -> None:
    configs = [str(small_toy(n, tmp_path, cache_dir)) for n in ("toy.toml", "toy_fixed.toml")]
    out = tmp_path / "out"
    args = ["compare", *configs, "--out", str(out), "--seeds", "2", "--budget-iterations", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    for name in ("toy", "toy_fixed"):
        for i in (0, 1):
            run = out / name / f"seed-{i}"
            assert json.loads((run / "config.json").read_text())["seed"] == i
            assert json.loads((run / "config.json").read_text())["budget"]["iterations"] == 2
            stored = tomllib.loads((run / "config.toml").read_text())
            assert (stored["seed"], stored["budget"]) == (i, {"iterations": 2})
            assert len((run / "history.jsonl").read_text().splitlines()) == 2
    comparison = json.loads((out / "comparison.json").read_text())
    assert set(comparison) == {"seeds", "score", "real_reference", "threshold", "references", "notes", "methods",
                               "runs"}
    assert comparison["score"] == "in-loop" and comparison["real_reference"] is None
    assert comparison["seeds"] == 2
    assert [m["method"] for m in comparison["methods"]] == ["toy", "toy_fixed"]
    assert [m["role"] for m in comparison["methods"]] == ["method", "initial"]
    assert comparison["threshold"]["method"] == "toy"
    assert len(comparison["runs"]) == 4
    assert all(m["best_val_metric"]["n"] == 2 for m in comparison["methods"])
    assert (out / "comparison.png").stat().st_size > 0
    assert "## Runs" in (out / "comparison.md").read_text()
    assert result.stdout == (out / "comparison.md").read_text()

    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "--resume" in again.stderr
    resumed = CliRunner().invoke(app, [*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert len((out / "toy" / "seed-1" / "history.jsonl").read_text().splitlines()) == 2


# ------------------------------------------------------------------ the fresh-model protocol ---
Point = tuple[float, int, float, float]  # (at, images, seconds, fresh test metric)


def write_final(folder: Path, points: list[Point]) -> None:
    """``final/final.json`` of a run: one fresh-model test metric per psi handed over."""
    entries = [{"label": f"at-{at:g}", "at": at, "images": images, "seconds": seconds, "psi": {},
                "val_metric": {"mean": metric - 0.01, "std": None, "n": 1},
                "test_metric": {"mean": metric, "std": None, "n": 1}} for at, images, seconds, metric in points]
    final = {"points": entries, "final": {k: entries[-1][k] for k in ("label", "val_metric", "test_metric")}}
    (folder / "final").mkdir()
    (folder / "final" / "final.json").write_text(json.dumps(final))


def test_fresh_threshold_is_read_from_the_quality_curves(three_methods: dict[str, dict[int, Path]]) -> None:
    curves = {  # the in-loop histories of three_methods rank otherwise: the fresh metric must decide
        ("autosim", 0): [(0.25, 100, 10.0, 0.40), (0.5, 300, 30.0, 0.58), (1.0, 500, 50.0, 0.61)],
        ("autosim", 1): [(0.25, 100, 12.0, 0.45), (0.5, 200, 24.0, 0.50), (1.0, 300, 36.0, 0.52)],
        ("random", 0): [(0.25, 250, 5.0, 0.55), (0.5, 500, 9.0, 0.57), (1.0, 750, 14.0, 0.57)],
        ("random", 1): [(0.25, 250, 6.0, 0.51), (1.0, 500, 11.0, 0.53)],
        ("fixed_initial", 0): [(0.25, 100, 3.0, 0.30), (1.0, 200, 6.0, 0.30)],
        ("fixed_initial", 1): [(0.25, 100, 3.5, 0.31), (1.0, 200, 7.0, 0.31)],
    }
    for (method, seed), points in curves.items():
        write_final(three_methods[method][seed], points)
    comparison = summarize(load_records(three_methods))
    assert comparison["score"] == "fresh"
    # The strongest baseline's final fresh metric per seed, not its best in-loop validation metric.
    assert comparison["threshold"]["method"] == "random"
    assert comparison["threshold"]["per_seed"] == {"0": 0.57, "1": 0.53}
    # seed 0: 0.58 >= 0.57 first at the 0.5 snapshot (300 images, 30 s), not at the end.
    seed0 = run_entry(comparison, "autosim", 0)
    assert (seed0["images_to_threshold"], seed0["seconds_to_threshold"]) == (300, 30.0)
    assert seed0["fresh_metric"] == 0.61
    # seed 1: 0.52 at the end stays below 0.53: not reached, and counted as such.
    seed1 = run_entry(comparison, "autosim", 1)
    assert seed1["threshold_reached"] is False and seed1["images_to_threshold"] is None
    entry = method_entry(comparison, "autosim")
    assert entry["threshold_reached"] == {"reached": 1, "of": 2}
    assert entry["fresh_metric"]["mean"] == pytest.approx(np.mean([0.61, 0.52]))
    assert entry["fresh_metric"]["std"] == pytest.approx(np.std([0.61, 0.52], ddof=1))
    # random reaches its own final value at the first snapshot holding it (0.5: 500 images).
    assert run_entry(comparison, "random", 0)["images_to_threshold"] == 500
    never = run_entry(comparison, "fixed_initial", 0)
    assert never["threshold_reached"] is False
    text = write_comparison(three_methods, three_methods["autosim"][0].parents[1] / "cmp")
    md = (three_methods["autosim"][0].parents[1] / "cmp" / "comparison.md").read_text()
    assert text["score"] == "fresh" and "fresh-model metric" in md and "not reached (0/2)" in md
    assert "0.425 → 0.540 → 0.565" in md  # autosim's curve: means over seeds per fraction
    assert (three_methods["autosim"][0].parents[1] / "cmp" / "psi-quality.png").exists()


def test_the_initial_reference_is_the_fixed_run_that_starts_where_the_search_does() -> None:
    roles = {"a": "method", "b": "baseline", "o": "oracle", "i": "reference", "w": "reference"}
    starts = {"a": "initial", "b": "initial", "o": "target", "i": "initial", "w": "wide"}
    refs = detect_references(roles, starts=starts)
    assert (refs.oracle, refs.initial, refs.notes) == ("o", "i", [])
    # Searches that start in two places leave the choice to --initial.
    assert detect_references(roles, starts={**starts, "b": "wide"}).initial is None


def test_compare_with_final_training_end_to_end(tmp_path: Path, cache_dir: Path) -> None:
    configs = []
    for name in ("toy.toml", "toy_fixed.toml"):
        path = small_toy(name, tmp_path, cache_dir)
        path.write_text(path.read_text() + "\n[final_training]\nimages = 128\nepochs = 2\n")
        configs.append(str(path))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["compare", *configs, "--out", str(out), "--budget-iterations", "4",
                                      "--final-training"])
    assert result.exit_code == 0, result.output
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["score"] == "fresh"
    for name in ("toy", "toy_fixed"):
        final = json.loads((out / name / "seed-0" / "final" / "final.json").read_text())
        assert [p["at"] for p in final["points"]] == [0.25, 0.5, 1.0]
        row = run_entry(comparison, name, 0)
        assert row["fresh_metric"] == final["final"]["test_metric"]["mean"]
        assert [p["images"] for p in row["quality_curve"]] == [64, 128, 256]  # iterations 1, 2, 4 of 64 scenes
    assert "fresh-model metric" in result.stdout
    # Finished runs scored again under another recipe: the comparison's, not the one they ran with.
    for path in configs:
        Path(path).write_text(Path(path).read_text().replace("images = 128", "images = 64"))
    again = CliRunner().invoke(app, ["compare", *configs, "--out", str(out), "--budget-iterations", "4",
                                     "--final-training", "--resume"])
    assert again.exit_code == 0, again.output
    final = json.loads((out / "toy" / "seed-0" / "final" / "final.json").read_text())
    assert final["images"] == 64


def test_a_different_final_recipe_per_config_is_refused(tmp_path: Path, cache_dir: Path) -> None:
    configs = [small_toy(n, tmp_path, cache_dir) for n in ("toy.toml", "toy_fixed.toml")]
    configs[1].write_text(configs[1].read_text() + "\n[final_training]\nepochs = 2\n")
    result = CliRunner().invoke(app, ["compare", *map(str, configs), "--out", str(tmp_path / "out"),
                                      "--final-training"])
    assert result.exit_code == 2 and "one recipe scores every method" in result.stderr
    assert not (tmp_path / "out").exists()


def test_the_real_data_reference_is_compared_with_every_learned_distribution(
        three_methods: dict[str, dict[int, Path]]) -> None:
    for (method, seed), metric in {("autosim", 0): 0.6, ("autosim", 1): 0.5, ("random", 0): 0.55,
                                   ("random", 1): 0.5, ("fixed_initial", 0): 0.3, ("fixed_initial", 1): 0.3}.items():
        write_final(three_methods[method][seed], [(1.0, 100, 1.0, metric)])
    real = {i: {"final": {"test_metric": {"mean": value}}} for i, value in ((0, 0.58), (1, 0.56))}
    comparison = summarize(load_records(three_methods), real_reference=real)
    # 0.57 on average: above autosim (0.55) and random (0.525); the fixed reference does not count.
    assert comparison["real_reference"]["metric"]["mean"] == pytest.approx(0.57)
    assert comparison["real_reference"]["beats_every_method"] is True
    real[1]["final"]["test_metric"]["mean"] = 0.50  # 0.54 on average: below autosim's 0.55
    assert summarize(load_records(three_methods), real_reference=real)["real_reference"]["beats_every_method"] is False


def test_the_comparison_files_are_written_whole_or_not_at_all(three_methods: dict[str, dict[int, Path]],
                                                              tmp_path: Path, full_disk: Any) -> None:
    out = tmp_path / "cmp"
    write_comparison(three_methods, out)
    names = ("comparison.json", "comparison.md", "comparison.png")
    before = {name: (out / name).read_bytes() for name in names}
    full_disk(figures=True)
    with pytest.raises(OSError, match="No space left"):
        write_comparison(three_methods, out)
    assert (out / "comparison.png").read_bytes() == before["comparison.png"]
    full_disk()
    for name in ("comparison.json", "comparison.md"):
        (out / name).write_text("the last comparison")
    with pytest.raises(OSError, match="No space left"):
        write_comparison(three_methods, out)
    assert [(out / name).read_bytes() for name in names] == [b"the last comparison"] * 2 + [before["comparison.png"]]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
