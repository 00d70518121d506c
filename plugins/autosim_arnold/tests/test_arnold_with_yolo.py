"""The examples feed autosim-yolo's detection tasks unchanged (when autosim-yolo is installed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from arnold_testing import needs_bpy, record

from autosim_arnold.params import ArnoldSettings
from autosim_arnold.plugin import arnold_simulator, render_records

yolo_plugin = pytest.importorskip("autosim_yolo.plugin")
EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


@needs_bpy
def test_yolo_collates_the_boxes_it_is_given() -> None:
    from autosim_yolo.settings import YoloSettings

    settings = ArnoldSettings(image_size=48, min_visible_fraction=0.3)
    examples = render_records([record("office:8:low", seed=s, n_objects=6, scene_id=s) for s in range(2)], settings)
    labels = arnold_simulator.labels(settings=settings)
    task = YoloSettings(classes=labels, input_size=64, min_visible_fraction=0.3)
    batch = yolo_plugin.collate_detection(examples, task)
    assert tuple(batch.inputs.shape) == (2, 3, 64, 64)
    scale = 64 / 48
    for i, example in enumerate(examples):
        kept = [o for o in example.objects if not o["ignore"]]
        rows = batch.targets[i][batch.targets[i][:, 2] > batch.targets[i][:, 0]]  # padding rows are empty
        assert len(rows) == len(kept) > 0
        for row, obj in zip(rows.tolist(), kept, strict=True):
            assert row[:4] == pytest.approx([v * scale for v in obj["box"]])
            assert labels[int(row[4])] == obj["category"]


@pytest.mark.parametrize("name", ["placement_yolo.toml", "placement_yolo_fixed.toml", "placement_yolo_oracle.toml",
                                  "placement_yolo_wide.toml"])
def test_example_configs_are_valid(name: str) -> None:
    from autosim_core.config import load_config

    config = load_config(EXAMPLES / name)
    assert config.simulator.name == "arnold"


def test_the_wide_example_starts_from_the_wide_preset(tmp_path: Path) -> None:
    from autosim_core.run import open_run

    from autosim_arnold.params import arnold_presets, arnold_space

    run = open_run(EXAMPLES / "placement_yolo_wide.toml", tmp_path / "run")
    settings = ArnoldSettings(image_size=64, threads=1)
    assert run.space.to_dict() == arnold_space(settings).override(arnold_presets(settings)["wide"]).to_dict()
    assert run.config.searcher.name == "fixed"
