"""The demo's combination end to end: CLEVR (fast backend) renders, UNet segments.

The shipped example configs run as they are, shrunk only in budget and sizes, through the CLI
(`autosim compare`), so what the README's first command runs is what is tested here.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import tomli_w
from typer.testing import CliRunner

from autosim_core.cli import app

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
HISTORY_FIELDS = {"iteration", "images", "seconds", "seconds_render", "seconds_train", "seconds_hypergrad",
                  "seconds_eval", "val_loss", "val_metric", "psi", "estimator"}


def shrunk(name: str, folder: Path, cache: Path) -> Path:
    config = tomllib.loads((EXAMPLES / name).read_text())
    config["budget"] = {"iterations": 2}
    config["simulator"]["settings"]["output_size"] = [32, 32]
    config["searcher"]["settings"]["scenes_per_iteration"] = 4
    config["training"]["epochs"] = 1
    config["validation"]["count"] = 4
    config["test"]["count"] = 4
    config["final_training"] = {"images": 8, "epochs": 1}
    config["cache_dir"] = str(cache)
    path = folder / name
    path.write_text(tomli_w.dumps(config))
    return path


def test_demo_configs_run_and_compare(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    configs = [shrunk(n, tmp_path, cache) for n in ("clevr_unet.toml", "clevr_unet_initial.toml",
                                                    "clevr_unet_oracle.toml", "clevr_unet_wide.toml")]
    out = tmp_path / "runs"
    result = CliRunner().invoke(app, ["compare", *map(str, configs), "--out", str(out), "--final-training"])
    assert result.exit_code == 0, result.output

    rows = [json.loads(line) for line in (out / "clevr_unet" / "seed-0" / "history.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2]
    assert HISTORY_FIELDS <= set(rows[-1])
    assert rows[-1]["images"] == 8
    assert {"ambient", "back_light", "samples", "bounces", "image_size", "x", "metal"} <= set(rows[-1]["psi"])
    # classes absent from 4 small validation images get no iou_ key; at least one is present
    assert {"miou_all", "pixel_accuracy"} <= set(rows[-1]["val_details"])
    assert {k for k in rows[-1]["val_details"] if k.startswith("iou_")} & {"iou_sphere", "iou_cube", "iou_cylinder"}
    summary = json.loads((out / "clevr_unet" / "seed-0" / "summary.json").read_text())
    assert 0.0 <= summary["test"]["metric"] <= 1.0
    assert "psi_validation" in summary

    comparison = json.loads((out / "comparison.json").read_text())
    assert [r["searcher"] for r in comparison["runs"]] == ["autosimulate", "fixed", "fixed", "fixed"]
    assert comparison["references"]["oracle"] == "clevr_unet_oracle"
    assert comparison["references"]["initial"] == "clevr_unet_initial"
    assert [m["role"] for m in comparison["methods"]] == ["method", "initial", "oracle", "reference"]
    assert comparison["score"] == "fresh"
    final = json.loads((out / "clevr_unet" / "seed-0" / "final" / "final.json").read_text())
    assert 0.0 <= final["final"]["test_metric"]["mean"] <= 1.0
    assert comparison["runs"][0]["fresh_metric"] == final["final"]["test_metric"]["mean"]
    assert (out / "comparison.png").stat().st_size > 0
    assert (out / "clevr_unet" / "seed-0" / "curves.png").stat().st_size > 0


def test_generate_writes_a_dataset_the_unet_task_reads_back(tmp_path: Path) -> None:
    from autosim_unet.data import load_folder

    cache = tmp_path / "cache"
    config = shrunk("clevr_unet.toml", tmp_path, cache)
    run_dir = tmp_path / "run"
    runner = CliRunner()
    assert runner.invoke(app, ["run", str(config), "--out", str(run_dir)]).exit_code == 0
    result = runner.invoke(app, ["generate", str(run_dir), "-n", "5", "-o", str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    examples = load_folder(tmp_path / "data", num_classes=4)
    assert len(examples) == 5
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert manifest["format"] == "png" and len(manifest["scene_seeds"]) == 5
    assert manifest["psi"] == json.loads((run_dir / "psi.json").read_text())["psi"]
    assert examples[0].image.shape == (3, 32, 32)
    assert examples[0].mask is not None and int(examples[0].mask.max()) <= 3


def test_black_box_searchers_run_on_the_demo(tmp_path: Path) -> None:
    """Each baseline searches the demo's learnable parameters: two evaluations of 4 images."""
    from autosim_clevr.params import clevr_space

    cache = tmp_path / "cache"
    base = tomllib.loads(shrunk("clevr_unet.toml", tmp_path, cache).read_text())
    base.pop("estimator")
    paths = []
    for searcher, extra in (("random", {"batch": 2}), ("bayesian", {"init_points": 2}), ("reinforce", {"batch": 2})):
        base["searcher"] = {"name": searcher, "settings": {"scenes_per_evaluation": 4, "epochs": 1, **extra}}
        path = tmp_path / f"{searcher}.toml"
        path.write_text(tomli_w.dumps(base))
        paths.append(path)
    out = tmp_path / "runs"
    result = CliRunner().invoke(app, ["compare", *map(str, paths), "--out", str(out)])
    assert result.exit_code == 0, result.output
    for path in paths:
        rows = [json.loads(line) for line in (out / path.stem / "seed-0" / "history.jsonl").read_text().splitlines()]
        assert [r["images"] for r in rows] == [4, 8]
        # the demo's 10 learnable parameters: four lights, samples, x and y with their spreads (14),
        # bounces and image_size (a weight per choice: any mix) and metal (p)
        assert {"bounces.weight.0", "image_size.weight.0", "metal.p", "x.mean", "x.log_std",
                "ambient.log_median"} <= set(rows[0]["point"])
        space = clevr_space()
        choices = len(space["bounces"].choices) + len(space["image_size"].choices)
        assert len(rows[0]["point"]) == 14 + choices + 1


def test_the_wide_example_trains_on_the_wide_preset(tmp_path: Path) -> None:
    from autosim_clevr.params import clevr_presets, clevr_space

    config = shrunk("clevr_unet_wide.toml", tmp_path, tmp_path / "cache")
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(run_dir)])
    assert result.exit_code == 0, result.output
    overrides = tomllib.loads(config.read_text())["simulator"]["overrides"]
    wide = clevr_space().override(clevr_presets()["wide"]).override(overrides)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["psi_start"] == summary["psi"] == json.loads(json.dumps(wide.describe(wide.init_psi())))
    assert json.loads((run_dir / "config.json").read_text())["space"] == json.loads(json.dumps(wide.to_dict()))


def test_the_pathwise_option_runs_on_the_demo(tmp_path: Path) -> None:
    """``pathwise = true``: the lights' coordinates get the pathwise estimate (the history says
    which), the others the score function, and psi moves."""
    config = shrunk("clevr_unet.toml", tmp_path, tmp_path / "cache")
    data = tomllib.loads(config.read_text())
    data["searcher"]["settings"]["pathwise"] = True
    config.write_text(tomli_w.dumps(data))
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(run_dir)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    est = rows[-1]["estimator"]
    lights = {f"{n}.{c}" for n in ("ambient", "key_light", "fill_light", "back_light") for c in ("loc", "log_std")}
    assert set(est["pathwise"]) == lights
    assert all(est["grad"][k] != 0.0 for k in lights)
    assert {"bounces.logits", "image_size.logits"} <= set(est["grad"])
    assert rows[0]["psi"] != rows[-1]["psi"]
