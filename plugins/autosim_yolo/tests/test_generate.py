"""``autosim generate`` on the shapes simulator: each format re-loads through this plugin's loaders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tomli_w
import torch
from autosim_core.cli import app
from autosim_core.config import parse_config
from autosim_core.run import Run
from typer.testing import CliRunner

from autosim_yolo.data import load_bop, load_coco, load_generated
from autosim_yolo.shapes import SHAPE_CLASSES

CONFIG = {
    "seed": 0,
    "simulator": {"name": "shapes", "start": "target", "settings": {"image_size": 64}},
    "task": {"name": "yolo", "settings": {"variant": "tiny", "input_size": 64, "width": 0.25}},
    "estimator": {"name": "linear"},
    "budget": {"iterations": 1},
    "validation": {"preset": "target", "count": 4, "seed": 1},
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder as ``autosim run`` leaves it, as far as ``generate`` reads it: config.toml
    and psi.json (here psi is the start's)."""
    folder = tmp_path_factory.mktemp("run")
    config = {**CONFIG, "cache_dir": str(folder / "cache")}
    (folder / "config.toml").write_text(tomli_w.dumps(config))
    run = Run(parse_config(config), folder)
    psi = run.space.init_psi()
    (folder / "psi.json").write_text(json.dumps({"psi": run.space.describe(psi),
                                                 "raw": {k: v.tolist() for k, v in psi.items()},
                                                 "space": run.space.with_psi(psi).to_dict()}))
    return folder


def generate(run_dir: Path, out: Path, fmt: str, count: int = 5) -> dict:
    result = CliRunner().invoke(app, ["generate", str(run_dir), "-n", str(count), "-o", str(out),
                                      "--format", fmt, "--batch", "3", "--seed", "4"])
    assert result.exit_code == 0, result.output
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def reference(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list:
    """The same five scenes in the png format, read back by load_generated: the other formats
    must hold the same images and boxes."""
    out = tmp_path_factory.mktemp("png") / "data"
    manifest = generate(run_dir, out, "png")
    assert manifest["examples"] == 5 and len(manifest["scene_seeds"]) == 5
    return load_generated(out)


def same_boxes(loaded, reference) -> None:
    assert len(loaded) == len(reference) == 5
    for a, b in zip(loaded, reference, strict=True):
        assert torch.equal(a.image, b.image)
        got = sorted((o["category"], *(round(v, 3) for v in o["box"])) for o in a.objects)
        want = sorted((o["category"], *(round(v, 3) for v in o["box"])) for o in b.objects
                      if o["box"][2] > o["box"][0] and o["box"][3] > o["box"][1])
        assert got == want
    assert any(e.objects for e in loaded)


def test_png_manifest(reference, run_dir: Path, tmp_path: Path) -> None:
    manifest = generate(run_dir, tmp_path / "data", "png", count=2)
    assert manifest["psi"] == json.loads((run_dir / "psi.json").read_text())["psi"]
    assert manifest["seed"] == 4 and manifest["simulator"]["name"] == "shapes"
    assert {"autosim-core", "autosim-yolo", "torch", "numpy"} <= set(manifest["versions"])
    # the seeds listed are those each image was rendered with (its scene record)
    assert manifest["scene_seeds"] == [e.scene["seed"] for e in load_generated(tmp_path / "data")]


def test_coco_reloads(reference, run_dir: Path, tmp_path: Path) -> None:
    manifest = generate(run_dir, tmp_path / "data", "coco")
    same_boxes(load_coco(tmp_path / "data"), reference)
    assert manifest["classes"] == {str(i): name for i, name in enumerate(SHAPE_CLASSES, 1)}


def test_bop_reloads(reference, run_dir: Path, tmp_path: Path) -> None:
    manifest = generate(run_dir, tmp_path / "data", "bop")
    loaded = load_bop(tmp_path / "data", names=manifest["classes"])
    same_boxes(loaded, reference)


def test_generate_into_a_non_empty_folder_is_an_error(run_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep.txt").write_text("x")
    result = CliRunner().invoke(app, ["generate", str(run_dir), "-n", "1", "-o", str(tmp_path / "data")])
    assert result.exit_code == 2
    assert "is not an empty folder" in result.output
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["keep.txt"]


def test_unknown_format_is_an_error(run_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["generate", str(run_dir), "-n", "1", "-o", str(tmp_path / "d"),
                                      "--format", "voc"])
    assert result.exit_code == 2 and "unknown format 'voc'; allowed: png, coco, bop" in result.output


def test_a_run_started_from_a_psi_json_generates_from_its_own(run_dir: Path, tmp_path: Path) -> None:
    """The run folder's config.toml is the config as written, so a relative ``start`` path now
    points nowhere; generate renders from the folder's own psi.json and needs the other one no more."""
    started = tmp_path / "started"
    started.mkdir()
    config = {**CONFIG, "cache_dir": str(tmp_path / "cache"),
              "simulator": {**CONFIG["simulator"], "start": "../earlier/psi.json"}}
    (started / "config.toml").write_text(tomli_w.dumps(config))
    (started / "psi.json").write_text((run_dir / "psi.json").read_text())
    assert not (started.parent / "earlier" / "psi.json").exists()
    manifest = generate(started, tmp_path / "data", "png", count=2)
    assert manifest["psi"] == json.loads((run_dir / "psi.json").read_text())["psi"]
