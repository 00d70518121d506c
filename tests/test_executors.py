"""Executors: the same images whichever renders them, and renders that survive faults."""

from __future__ import annotations

import json
import os
import pickle
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from executor_helpers import expected_points, flaky_config, flaky_run, render_batch
from flaky_simulator import flaky_simulator

from autosim_core.config import ConfigError, parse_config
from autosim_core.executors import RenderError, plugin_target, split_contiguous
from autosim_core.observers import read_history
from autosim_core.run import Run

PROCESSES = {"kind": "processes", "workers": 2}


@pytest.mark.parametrize(("count", "parts"), [(10, 2), (10, 3), (3, 8), (1, 1), (64, 7)])
def test_chunks_are_contiguous_and_cover_every_scene_once(count: int, parts: int) -> None:
    chunks = split_contiguous(count, parts)
    assert [i for c in chunks for i in c] == list(range(count))
    sizes = [len(c) for c in chunks]
    assert len(chunks) == min(count, parts) and max(sizes) - min(sizes) <= 1


def test_the_plugin_is_found_by_its_module_attribute() -> None:
    assert plugin_target(flaky_simulator) == "flaky_simulator:flaky_simulator"
    assert plugin_target(object()) is None


def test_inline_and_pooled_workers_render_the_same_images(tmp_path: Path, fake_processes: list[Any]) -> None:
    inline = flaky_run(tmp_path, "inline")
    processes = flaky_run(tmp_path, "processes", executor={**PROCESSES, "workers": 3})
    try:
        records, examples = render_batch(inline)
        records_p, examples_p = render_batch(processes)
        records_p2, examples_p2 = render_batch(processes)
    finally:
        processes.close()
    assert [r["seed"] for r in records] == [r["seed"] for r in records_p] == [r["seed"] for r in records_p2]
    expected = expected_points(records)
    for got in (examples, examples_p, examples_p2):
        assert torch.equal(torch.stack([e.image for e in got]), expected)
        assert [e.scene["id"] for e in got] == list(range(10))
    # One chunk per worker and batch; the workers kept their simulator between the batches.
    [backend] = fake_processes
    assert backend.starts == [0, 1, 2] and backend.jobs == {0: 2, 1: 2, 2: 2}


@pytest.mark.processes
def test_worker_processes_render_the_inline_images_through_faults(tmp_path: Path) -> None:
    """Real worker processes (a forkserver's): a render that raises, one that kills its process
    and one that hangs past render_timeout, each in another worker's chunk, are retried on the
    replaced workers; every image is the inline one, and a second batch renders on the same pool."""
    inline = flaky_run(tmp_path, "inline")
    processes = flaky_run(tmp_path, "processes", executor={**PROCESSES, "workers": 3, "render_timeout": 2,
                                                           "retries": 2, "start_method": "forkserver"},
                          raise_on=[1], crash_on=[5], hang_on=[8])
    try:
        records, examples = render_batch(inline)
        records_p, examples_p = render_batch(processes)
        records_p2, examples_p2 = render_batch(processes, seed=4)
    finally:
        processes.close()
    assert [r["seed"] for r in records] == [r["seed"] for r in records_p]
    for got, want in ((examples, records), (examples_p, records), (examples_p2, records_p2)):
        assert torch.equal(torch.stack([e.image for e in got]), expected_points(want))
        assert [e.scene["id"] for e in got] == list(range(10))
    # The three workers fail at once: their retries are reported in the order the failures arrive.
    events = sorted((e["scenes"], e["attempt"], e["reason"]) for e in processes.events)
    assert events == [([0, 1, 2, 3], 1, "RuntimeError: scene 1: chosen to fail"),
                      ([4, 5, 6], 1, "the worker process died (exit code 3)"),
                      ([7, 8, 9], 1, "no result after render_timeout = 2 s (the worker was killed)")]


@pytest.mark.processes
def test_a_forkserver_worker_starts_with_torch_loaded(tmp_path: Path) -> None:
    """The forkserver imports torch once; the workers it forks find it loaded (the forkserver's
    memory maps hold libtorch), instead of spending seconds each on importing it."""
    from autosim_core.workers import Job, Recipe, WorkerPool, make_backend

    if not Path("/proc/self/maps").exists():
        pytest.skip("reads the forkserver's memory maps from /proc")
    found: list[Any] = []
    recipe = Recipe(forkserver_torch, sys_path=tuple(sys.path))
    pool = WorkerPool(make_backend("processes", 1, start_method="forkserver"), recipe)
    try:
        pool.run([Job(None)], on_done=lambda job, result: found.append(result),
                 on_spent=lambda failure: pytest.fail(failure.reason))
    finally:
        pool.close()
    [(parent, loaded)] = found
    assert parent != os.getpid() and loaded


def test_an_exception_is_retried_inline(tmp_path: Path) -> None:
    run = flaky_run(tmp_path, "raise", raise_on=[4], executor={"retries": 1})
    records, examples = render_batch(run)
    assert torch.equal(torch.stack([e.image for e in examples]), expected_points(records))
    assert [(e["event"], e["scenes"], e["attempt"]) for e in run.events] == [("render_retry", list(range(10)), 1)]
    assert "chosen to fail" in run.events[0]["reason"]


def test_spent_retries_inline_keep_the_simulators_exception(tmp_path: Path) -> None:
    run = flaky_run(tmp_path, "raise", raise_on=[3], fail_times=9, executor={"retries": 1})
    with pytest.raises(RenderError, match=r"scene 3 failed to render 2 time\(s\) \(inline executor; last: "
                                          r"RuntimeError: scene 3: chosen to fail\)") as caught:
        render_batch(run)
    assert isinstance(caught.value.__cause__, RuntimeError)
    # The batch failed once as a whole, then scene 3 alone spent its one retry.
    assert [(e["scenes"], e["attempt"]) for e in run.events] == [(list(range(10)), 1)]


@pytest.mark.parametrize("fault", ["raise_on", "crash_on", "hang_on"])
def test_a_failing_worker_is_replaced_and_its_scenes_retried(tmp_path: Path, fault: str,
                                                             fake_processes: list[Any]) -> None:
    run = flaky_run(tmp_path, fault, executor={**PROCESSES, "render_timeout": 1.5, "retries": 2}, **{fault: [7]})
    try:
        records, examples = render_batch(run)
    finally:
        run.close()
    assert torch.equal(torch.stack([e.image for e in examples]), expected_points(records))
    # Scenes 5..9 were the failing worker's chunk: retried, once, one scene at a time.
    assert [(e["scenes"], e["attempt"]) for e in run.events] == [([5, 6, 7, 8, 9], 1)]
    reason = run.events[0]["reason"]
    assert reason == {"raise_on": "RuntimeError: scene 7: chosen to fail",
                      "crash_on": "the worker process died (exit code 3)",
                      "hang_on": "no result after render_timeout = 1.5 s (the worker was killed)"}[fault]
    # Only a worker that died or hung is replaced; the other keeps its simulator.
    [backend] = fake_processes
    assert backend.starts == ([0, 1] if fault == "raise_on" else [0, 1, 1])


def test_spent_retries_stop_with_the_scene_named(tmp_path: Path, fake_processes: list[Any]) -> None:
    run = flaky_run(tmp_path, "spent", executor={**PROCESSES, "retries": 1}, crash_on=[6], fail_times=5)
    try:
        with pytest.raises(RenderError) as caught:
            render_batch(run)
    finally:
        run.close()
    message = str(caught.value)
    assert "scene 6 failed to render 2 time(s)" in message and "exit code 3" in message
    assert caught.value.scene["id"] == 6 and "'x':" in message
    assert "before its first checkpoint" in message
    assert [e["scenes"] for e in run.events] == [[5, 6, 7, 8, 9]]


def test_a_run_with_a_crashing_worker_equals_an_undisturbed_inline_run(tmp_path: Path,
                                                                      fake_processes: list[Any]) -> None:
    """Every scene reaches training exactly once: the model equals the inline run's."""
    calm = flaky_run(tmp_path, "calm")
    calm.execute()
    faulty = flaky_run(tmp_path, "faulty", executor=PROCESSES, crash_on=[14], raise_on=[30])
    try:
        faulty.execute()
    finally:
        faulty.close()
    rows = [json.loads(line) for line in (faulty.out_dir / "history.jsonl").read_text().splitlines()]
    events = [r for r in rows if "event" in r]
    iterations = [r for r in rows if "event" not in r]
    assert [(e["iteration"], e["scenes"]) for e in events] == [(2, [12, 13, 14, 15, 16, 17]),
                                                               (3, [30, 31, 32, 33, 34, 35])]
    assert [r["iteration"] for r in iterations] == [1, 2, 3] and iterations[-1]["images"] == 36
    assert calm.model is not None and faulty.model is not None
    for name, value in calm.model.state_dict().items():
        assert torch.equal(value, faulty.model.state_dict()[name]), name


def test_executor_and_device_settings_are_checked(tmp_path: Path) -> None:
    config = flaky_config(tmp_path, executor={"kind": "processes", "address": "auto", "workers": 0})
    config["training"]["device"] = "gpu"
    with pytest.raises(ConfigError) as caught:
        parse_config(config)
    lines = "\n".join(caught.value.lines)
    assert "executor.workers" in lines and "executor: Value error" not in lines
    assert "training.device: String should match pattern" in lines
    config = flaky_config(tmp_path, executor={"kind": "inline", "address": "auto"})
    with pytest.raises(ConfigError, match="address is only used by kind = 'ray'"):
        parse_config(config)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without CUDA")
def test_cuda_without_a_gpu_is_a_config_error(tmp_path: Path) -> None:
    config = flaky_config(tmp_path)
    config["training"]["device"] = "cuda:0"
    with pytest.raises(ConfigError, match=r"training.device: 'cuda:0': torch sees no CUDA device"):
        Run(parse_config(config), tmp_path / "run")


def test_auto_device_follows_cuda(tmp_path: Path) -> None:
    config = flaky_config(tmp_path)
    config["training"]["device"] = "auto"
    config["simulator"]["name"] = "toy-gaussians"
    config["simulator"]["settings"] = {}
    run = Run(parse_config(config), tmp_path / "run")
    assert run.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_run_follows_the_cpu_run(tmp_path: Path, cache_dir: Path, make_toy_data: Any) -> None:
    """The same toy run on the GPU and on the CPU: same scenes, so psi moves the same way."""
    found = {}
    for device in ("cpu", "cuda"):
        data = make_toy_data(cache_dir, iterations=3)
        data["training"]["device"] = device
        run = Run(parse_config(data), tmp_path / device)
        run.execute()
        assert run.model is not None
        assert {p.device.type for p in run.model.parameters()} == {device}
        found[device] = {k: v.detach().clone() for k, v in run.psi.items()}
    for name, value in found["cpu"].items():
        torch.testing.assert_close(found["cuda"][name], value, rtol=1e-3, atol=1e-4)


class _Killed(Exception):
    pass


def test_retry_lines_survive_a_resume_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A retry line of a checkpointed iteration is kept on resume (once), and the readers of the
    history (compare's records, the curves) see iteration rows only."""
    calm = flaky_run(tmp_path, "calm", raise_on=[14], executor={"retries": 1})
    calm.execute()
    original = Run.fine_tune

    def die_in_iteration_3(self: Run, *args: Any, **kwargs: Any) -> Any:
        if self.iteration == 3:
            raise _Killed
        return original(self, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(Run, "fine_tune", die_in_iteration_3)
        with pytest.raises(_Killed):
            flaky_run(tmp_path, "killed", raise_on=[14], executor={"retries": 1}).execute()
    resumed = flaky_run(tmp_path, "killed", raise_on=[14], executor={"retries": 1})
    resumed.execute(resume=True)

    def lines(run: Run) -> list[tuple[int, str | None]]:
        rows = [json.loads(line) for line in (run.out_dir / "history.jsonl").read_text().splitlines()]
        return [(r["iteration"], r.get("event")) for r in rows]

    assert lines(resumed) == lines(calm) == [(1, None), (2, "render_retry"), (2, None), (3, None)]
    assert [r["iteration"] for r in read_history(resumed.out_dir / "history.jsonl")] == [1, 2, 3]
    assert calm.model is not None and resumed.model is not None
    for name, value in calm.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name


def test_examples_travel_as_numpy_and_come_back_equal() -> None:
    from autosim_core.executors import WireTensor, from_wire, to_wire
    from autosim_core.records import Example

    image = torch.rand(3, 4, 5)
    example = Example(image=image[:, ::2], mask=torch.arange(20).view(4, 5), label=1,
                      target=torch.tensor([1.5, -2.0], dtype=torch.float64),
                      objects=[{"box": torch.tensor([1.0, 2.0, 3.0, 4.0]), "category": "cube"}],
                      scene={"id": 7, "seed": 3, "half": torch.ones(2, dtype=torch.bfloat16)})
    wire = to_wire([example])
    assert isinstance(wire[0].image, WireTensor) and isinstance(wire[0].objects[0]["box"], WireTensor)
    assert isinstance(wire[0].scene["half"], torch.Tensor)  # numpy has no bfloat16: torch pickles it
    back = from_wire(pickle.loads(pickle.dumps(wire, protocol=5)))[0]
    for got, want in ((back.image, example.image), (back.mask, example.mask), (back.target, example.target),
                      (back.objects[0]["box"], example.objects[0]["box"]), (back.scene["half"], example.scene["half"])):
        assert got.dtype == want.dtype and torch.equal(got, want)
    assert back.label == 1 and back.scene["id"] == 7 and back.objects[0]["category"] == "cube"
    back.image += 1  # the run's own memory, writable


def test_blender_script_folders_stop_shadowing_the_bpy_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker spawned by a parent that imported bpy starts with Blender's script folders first
    on its path; moved to the end, ``bpy`` is the installed module again, not Blender's package."""
    import importlib.machinery

    from autosim_core.executors import blender_paths_last

    site = tmp_path / "site-packages"
    (site / "bpy").mkdir(parents=True)
    (site / "bpy" / "__init__.py").write_text("")
    scripts = site / "bpy" / "5.0" / "scripts"
    for folder in ("startup", "modules"):
        (scripts / folder).mkdir(parents=True)
    (scripts / "modules" / "bpy").mkdir()
    (scripts / "modules" / "bpy" / "__init__.py").write_text("import _bpy\n")
    inherited = [str(scripts / "startup"), str(scripts / "modules"), "/elsewhere", str(site)]
    monkeypatch.setattr("sys.path", list(inherited))
    assert importlib.machinery.PathFinder.find_spec("bpy", sys.path).origin == str(scripts / "modules" / "bpy" /
                                                                                   "__init__.py")
    blender_paths_last()
    assert sys.path == ["/elsewhere", str(site), str(scripts / "startup"), str(scripts / "modules")]
    assert importlib.machinery.PathFinder.find_spec("bpy", sys.path).origin == str(site / "bpy" / "__init__.py")


def forkserver_torch(state: Any, payload: Any) -> tuple[int, bool]:
    """In a worker: its parent's pid and whether the parent has libtorch mapped."""
    parent = os.getppid()
    return parent, "libtorch" in Path(f"/proc/{parent}/maps").read_text()
