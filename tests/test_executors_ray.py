"""The Ray executor on a local Ray (nox session ``ray``): same images as inline, faults retried."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from executor_helpers import expected_points, flaky_run, render_batch

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_TMPDIR", "/tmp/ray-t")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def test_ray_renders_the_same_images_as_inline(tmp_path: Path) -> None:
    records, examples = render_batch(flaky_run(tmp_path, "inline"))
    found = []
    for workers in (2, 1):  # each worker holds one of the two CPUs until its executor closes
        on_ray = flaky_run(tmp_path, f"ray{workers}", executor={"kind": "ray", "workers": workers})
        try:
            found.append(render_batch(on_ray))
        finally:
            on_ray.close()
    (records_r, examples_r), (records_1, examples_1) = found
    assert [r["seed"] for r in records] == [r["seed"] for r in records_r] == [r["seed"] for r in records_1]
    expected = expected_points(records)
    for got in (examples, examples_r, examples_1):
        assert torch.equal(torch.stack([e.image for e in got]), expected)
    assert ray.is_initialized()  # the executor left the Ray it joined running


def test_failing_ray_workers_are_replaced_and_their_scenes_retried(tmp_path: Path) -> None:
    """A render that raises (first chunk) and one that kills its actor (second chunk), then, among
    the second chunk's scenes retried one at a time, one that hangs past render_timeout: each is
    retried on a replaced actor, and every image is the inline one."""
    run = flaky_run(tmp_path, "faults", executor={"kind": "ray", "workers": 2, "render_timeout": 2, "retries": 2},
                    raise_on=[2], crash_on=[6], hang_on=[8])
    try:
        records, examples = render_batch(run)
    finally:
        run.close()
    assert torch.equal(torch.stack([e.image for e in examples]), expected_points(records))
    assert [(e["scenes"], e["attempt"]) for e in run.events] == [([0, 1, 2, 3, 4], 1), ([5, 6, 7, 8, 9], 1),
                                                                ([8], 2)]
    reasons = [e["reason"] for e in run.events]
    assert reasons[0] == "RuntimeError: scene 2: chosen to fail"
    assert reasons[1].startswith("the Ray worker died (")
    assert reasons[2] == "no result after render_timeout = 2 s (the Ray worker was killed)"


def test_spent_retries_on_ray_name_the_scene(tmp_path: Path) -> None:
    from autosim_core.executors import RenderError

    run = flaky_run(tmp_path, "spent", executor={"kind": "ray", "workers": 2, "retries": 1}, raise_on=[8],
                    fail_times=5)
    try:
        with pytest.raises(RenderError, match=r"scene 8 failed to render 2 time\(s\) \(ray executor; last: "
                                              r"RuntimeError: scene 8: chosen to fail\)"):
            render_batch(run)
    finally:
        run.close()


def test_compare_on_ray_gives_the_comparison_inline_gives(tmp_path: Path, cache_dir: Path) -> None:
    from test_compare_executors import compare, history, runs_of, small_toy

    configs = [small_toy(n, tmp_path, cache_dir) for n in ("toy.toml", "toy_fixed.toml")]
    inline = compare(configs, tmp_path / "inline")
    assert inline.exit_code == 0, inline.output
    on_ray = compare(configs, tmp_path / "ray", "--executor", "ray", "--workers", "2")
    assert on_ray.exit_code == 0, on_ray.output
    expected, found = runs_of(tmp_path / "inline"), runs_of(tmp_path / "ray")
    assert set(found) == set(expected) == {("toy", 0), ("toy_fixed", 0)}
    for key, row in expected.items():
        for column in ("best_val_metric", "final_val_metric", "test_metric", "images", "psi"):
            assert found[key][column] == row[column], (key, column)
        folder = Path(key[0]) / f"seed-{key[1]}"
        assert history(tmp_path / "ray" / folder) == history(tmp_path / "inline" / folder)
    assert ray.is_initialized()  # the comparison left the Ray it joined running


def test_blackbox_evaluations_on_ray_equal_one_at_a_time(tmp_path: Path, cache_dir: Path, make_toy_data: Any) -> None:
    """A REINFORCE batch of four evaluated by two Ray actors: the inline run's rows and model."""
    from test_parallel_evaluations import assert_same, outcome, searcher_data

    from autosim_core.config import parse_config
    from autosim_core.run import Run

    inline = searcher_data(make_toy_data, cache_dir, "reinforce", 5, batch=4)
    Run(parse_config(inline), tmp_path / "inline").execute()
    on_ray = searcher_data(make_toy_data, cache_dir, "reinforce", 5, {"kind": "ray", "workers": 2}, batch=4)
    Run(parse_config(on_ray), tmp_path / "ray").execute()
    assert_same(outcome(tmp_path / "inline"), outcome(tmp_path / "ray"))
    assert ray.is_initialized()  # the module's Ray: the run joined it and left it running
