"""End-to-end runs of the core's AutoSimulate loop with the unet task and a tiny simulator."""

import json
import math

import pytest
import torch
from autosim_core.estimators import linear_plugin
from unet_helpers import ESTIMATORS, Spy, make_run, registry

from autosim_unet.plugin import UNetTask

ROW_FIELDS = {"iteration", "images", "seconds", "seconds_render", "seconds_train", "seconds_hypergrad",
              "seconds_eval", "val_loss", "val_metric", "psi", "estimator"}


@pytest.mark.parametrize("estimator", list(ESTIMATORS))
def test_two_iterations_write_complete_history(tmp_path, estimator):
    with_val = estimator != "no-val"
    run = make_run(tmp_path, estimator, validation=with_val,
                   estimator_settings={"max_iter": 3} if estimator == "quadratic" else None)
    initial_psi = run.space.describe(run.space.init_psi())
    summary = run.execute()

    rows = [json.loads(line) for line in (run.out_dir / "history.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2]
    for k, row in enumerate(rows, start=1):
        assert ROW_FIELDS <= set(row), ROW_FIELDS - set(row)
        assert row["images"] == 4 * k
        assert row["estimator"]["name"] == estimator
        assert math.isfinite(row["estimator"]["grad_norm"])
        assert set(row["psi"]) == {"brightness", "size", "shape"}
        for phase in ("render", "train", "hypergrad"):
            assert row[f"seconds_{phase}"] > 0
        if with_val:
            assert 0.0 <= row["val_metric"] <= 1.0 and math.isfinite(row["val_loss"])
            assert {"iou_background", "pixel_accuracy"} <= set(row["val_details"])
            assert row["seconds_eval"] > 0
        else:
            assert row["val_loss"] is None and row["val_metric"] is None
    assert rows[1]["seconds"] >= rows[0]["seconds"]
    assert rows[-1]["estimator"]["grad_norm"] > 0
    assert rows[-1]["psi"] != initial_psi  # the hypergradient moved psi
    assert summary["iterations"] == 2 and summary["images"] == 8
    if with_val:
        assert 0.0 <= summary["test"]["metric"] <= 1.0


def test_frozen_layers_stay_fixed_and_are_not_in_theta(tmp_path):
    spy = Spy(linear_plugin)
    run = make_run(tmp_path, "spy", registry(estimators={"spy": spy}), task={"freeze": 3})
    run.execute()

    torch.manual_seed(run.config.seed)
    initial = UNetTask().create_model(settings=run.task_settings)
    frozen = {n for n, p in initial.named_parameters() if not p.requires_grad}
    trainable = {n for n, p in initial.named_parameters() if p.requires_grad}
    assert len(frozen) == 12 and trainable

    after = dict(run.model.named_parameters())
    before = dict(initial.named_parameters())
    for name in frozen:
        assert torch.equal(after[name], before[name]), name
    assert any(not torch.equal(after[n], before[n]) for n in trainable)

    assert len(spy.calls) == 2
    for call in spy.calls:
        assert call["params"] == call["g_val"] == call["hvp"] == trainable
