"""The fused validation pass against a separate no-grad evaluation and a separate gradient;
nested phases of the run's clock."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.func import functional_call

from autosim_core.clock import Clock
from autosim_core.hypergrad import loss_gradient
from autosim_core.records import Batch
from autosim_core.training import validation_pass


def model_and_data(freeze_first: bool) -> tuple[torch.nn.Module, Batch]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    if freeze_first:
        for p in model[0].parameters():
            p.requires_grad_(False)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(23, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (23,), generator=gen)
    return model, Batch(x, y)


def losses(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(outputs, targets, reduction="none")


def metrics(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    return {"metric": float((outputs.argmax(1) == targets).double().mean()), "logit_sum": float(outputs.sum())}


@pytest.mark.parametrize("freeze_first", [False, True])
@pytest.mark.parametrize("chunk", [5, 64])
def test_one_pass_gives_the_scores_and_gradient_of_separate_passes(freeze_first: bool, chunk: int) -> None:
    model, batch = model_and_data(freeze_first)
    result = validation_pass(model, batch, losses, metrics, chunk)

    with torch.no_grad():
        out = model(batch.inputs)
    assert result.loss == pytest.approx(float(losses(out, batch.targets).mean()), rel=1e-12)
    assert result.metrics == pytest.approx(metrics(out, batch.targets), rel=1e-12)

    theta = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    fixed = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    expected = loss_gradient(
        lambda th: losses(functional_call(model, {**fixed, **th}, (batch.inputs,)), batch.targets).mean(), theta)
    assert set(result.gradient) == set(theta)
    for name in theta:
        torch.testing.assert_close(result.gradient[name], expected[name], rtol=1e-10, atol=1e-12)
        assert not result.gradient[name].requires_grad
    assert all(p.grad is None for p in model.parameters())


def test_evaluation_context_wraps_every_forward_and_the_metrics() -> None:
    model, batch = model_and_data(False)
    entered: list[int] = []

    class Count:
        def __enter__(self) -> None:
            entered.append(1)

        def __exit__(self, *exc: object) -> None:
            return None

    validation_pass(model, batch, losses, metrics, 10, Count)
    assert len(entered) == 3 + 1  # three chunks, then the metrics


def test_a_phase_timed_inside_another_keeps_its_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = itertools.count()
    monkeypatch.setattr("autosim_core.clock.time.perf_counter", lambda: float(next(ticks)))
    told: list[tuple[str, bool]] = []
    clock = Clock(lambda phase, started: told.append((phase, started)))  # observers hear of each phase
    with clock.timed("hypergrad"):  # starts at 0
        with clock.timed("eval"):  # 1 .. 2
            pass
        with clock.timed("eval"):  # 3 .. 4
            pass
    # the outer block ends at 5: 5 seconds in all, 2 of them evaluation
    assert clock.seconds == {"render": 0.0, "train": 0.0, "hypergrad": 3.0, "eval": 2.0}
    assert told == [("hypergrad", True), ("eval", True), ("eval", False), ("eval", True), ("eval", False),
                    ("hypergrad", False)]
    with clock.timed("train"):  # 6 .. 7, with nothing left open from before
        pass
    assert clock.seconds["train"] == 1.0
