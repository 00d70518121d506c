"""Evaluation chunk by chunk through a task's metric accumulator equals the concatenating
default, and the accumulator never holds more than a chunk of outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from autosim_core import hookimpl
from autosim_core.config import parse_config
from autosim_core.run import Run
from autosim_core.training import ConcatenatingAccumulator

CHUNK = 7  # does not divide the set: the last chunk is short


class CountingAccuracy:
    """Accuracy from counts: correct predictions and examples, added chunk by chunk."""

    def __init__(self, seen: list[int]) -> None:
        self.correct = 0
        self.total = 0
        self.seen = seen

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.seen.append(len(outputs))
        self.correct += int((outputs.argmax(-1) == targets).sum())
        self.total += len(targets)

    def compute(self) -> dict[str, float]:
        return {"metric": self.correct / self.total}


class StreamingToy:
    def __init__(self) -> None:
        self.seen: list[int] = []

    @hookimpl
    def metric_accumulator(self) -> CountingAccuracy:
        return CountingAccuracy(self.seen)


def toy_run(tmp_path: Path, cache_dir: Path, make_toy_data: Any, observers: tuple[Any, ...] = ()) -> Run:
    data = make_toy_data(cache_dir, val_count=100)
    data["training"]["eval_batch_size"] = CHUNK
    run = Run(parse_config(data), tmp_path / "run", observers=observers)
    run.val = run.load_data("validation")
    run.model = run.create_model()
    with torch.no_grad():  # a boundary through the data, so that accuracy is neither 0 nor 1
        run.model.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.3]]))
        run.model.bias.copy_(torch.tensor([0.0, -3.0]))
    return run


def test_streaming_accuracy_equals_the_concatenating_default(tmp_path: Path, cache_dir: Path,
                                                             make_toy_data: Any) -> None:
    plugin = StreamingToy()
    streaming = toy_run(tmp_path / "a", cache_dir, make_toy_data, (plugin,))
    concatenating = toy_run(tmp_path / "b", cache_dir, make_toy_data)
    assert isinstance(concatenating.metric_accumulator(), ConcatenatingAccumulator)
    assert isinstance(streaming.metric_accumulator(), CountingAccuracy)
    assert streaming.val is not None and concatenating.val is not None
    assert torch.equal(streaming.val.inputs, concatenating.val.inputs)

    loss_s, metrics_s = streaming.evaluate(streaming.model, streaming.val)
    loss_c, metrics_c = concatenating.evaluate(concatenating.model, concatenating.val)
    # Independent answer: accuracy of the whole set in one forward pass.
    with torch.no_grad():
        whole = (concatenating.model(concatenating.val.inputs).argmax(-1) == concatenating.val.targets)
    assert 0.1 < float(whole.double().mean()) < 0.9
    # The toy's own evaluate takes a float32 mean; the counts are exact.
    assert metrics_s["metric"] == float(whole.double().mean())
    assert metrics_c["metric"] == pytest.approx(metrics_s["metric"], rel=1e-6)
    assert loss_s == loss_c
    assert plugin.seen == [CHUNK] * (100 // CHUNK) + [100 % CHUNK]  # one chunk at a time

    plugin.seen.clear()
    fused_s = streaming.validation_pass(streaming.model)
    fused_c = concatenating.validation_pass(concatenating.model)
    assert fused_s.metrics == metrics_s and fused_c.metrics == metrics_c
    assert plugin.seen == [CHUNK] * (100 // CHUNK) + [100 % CHUNK]
    for name in fused_c.gradient:
        assert torch.equal(fused_s.gradient[name], fused_c.gradient[name])


def test_a_run_scores_with_the_task_accumulator(tmp_path: Path, cache_dir: Path, make_toy_data: Any) -> None:
    plugin = StreamingToy()
    data = make_toy_data(cache_dir, iterations=2, val_count=100)
    data["training"]["eval_batch_size"] = CHUNK
    streamed = Run(parse_config(data), tmp_path / "a", observers=(plugin,)).execute()
    reference = Run(parse_config(data), tmp_path / "b").execute()
    assert plugin.seen and max(plugin.seen) == CHUNK
    assert streamed["val"]["loss"] == reference["val"]["loss"]
    assert streamed["val"]["metric"] == pytest.approx(reference["val"]["metric"], rel=1e-6)
