"""The cheaper ways of forming a hypergradient, each against an exact answer: the validation
gradient over a subset against the subset's own gradient, c_k by central difference checked
against the jvp (and the run falling back to the jvp where the difference is wrong), the
seeded subsets of a run, the curvature over a subset of the scenes against its dense Hessian."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.func import functional_call

from autosim_core.config import parse_config
from autosim_core.contracts import HypergradProblem
from autosim_core.estimators import approx_quadratic, linear
from autosim_core.hypergrad import error_over_stderr, hvp_operator, loss_gradient
from autosim_core.records import Batch
from autosim_core.run import Run
from autosim_core.rundir import HISTORY
from autosim_core.searchers import (
    CK_AUTO_CHECK_EVERY,
    CK_AUTO_TOLERANCE,
    CkChoice,
    Rendered,
    curvature_subset,
    hypergrad_problem,
    validation_subset,
)
from autosim_core.space import Normal, ParameterSpace
from autosim_core.training import validation_pass


def losses(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(outputs, targets, reduction="none")


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    return {"metric": float((outputs.argmax(1) == targets).double().mean())}


def mlp(dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).to(dtype)


def data(n: int, seed: int, dtype: torch.dtype = torch.float64) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(n, 5, generator=gen, dtype=dtype), torch.randint(0, 3, (n,), generator=gen))


def theta_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters()}


@pytest.mark.parametrize("chunk", [4, 64])
def test_the_gradient_over_some_rows_is_theirs_and_the_scores_stay_the_whole_sets(chunk: int) -> None:
    model, val = mlp(), data(23, 1)
    rows = torch.tensor([2, 3, 7, 11, 19])
    result = validation_pass(model, val, losses, accuracy, chunk, gradient_rows=rows)

    subset = val.select(rows)
    expected = loss_gradient(lambda th: losses(functional_call(model, th, (subset.inputs,)), subset.targets).mean(),
                             theta_of(model))
    for name, g in expected.items():
        torch.testing.assert_close(result.gradient[name], g, rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        out = model(val.inputs)
    assert result.loss == pytest.approx(float(losses(out, val.targets).mean()), rel=1e-12)
    assert result.metrics == pytest.approx(accuracy(out, val.targets), rel=1e-12)


def test_error_over_stderr_is_the_worst_coordinate_in_its_own_standard_errors() -> None:
    estimate = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([-3.0])}
    reference = {"a": torch.tensor([0.0, 0.0]), "b": torch.tensor([0.0])}
    # a[1] has no spread and is left out; b is off by 3 standard errors of 1.5 = 2
    assert error_over_stderr(estimate, reference, {"a": torch.tensor([2.0, 0.0]), "b": torch.tensor([1.5])}) == 2.0
    assert error_over_stderr(estimate, reference, {"a": torch.zeros(2), "b": torch.zeros(1)}) == 0.0


def problem(dtype: torch.dtype, offset: float, c_k: str, check: bool) -> HypergradProblem:
    """An MLP's hypergradient problem; ``offset`` added to every loss (a constant: no gradient
    changes) makes the float32 rounding of the losses, and so of their central difference, large."""
    model, train, val = mlp(dtype), data(32, 2, dtype), data(40, 3, dtype)
    theta = theta_of(model)

    def per_sample(th: dict[str, torch.Tensor]) -> torch.Tensor:
        return losses(functional_call(model, th, (train.inputs,)), train.targets) + offset

    space = ParameterSpace(x=Normal(mean=0.0, std=1.0))
    psi = {k: v.requires_grad_(True) for k, v in space.init_psi().items()}
    latents = space.sample(psi, 32, torch.Generator().manual_seed(4))
    g_val = loss_gradient(lambda th: losses(functional_call(model, th, (val.inputs,)), val.targets).mean(), theta)
    return HypergradProblem(params=theta, train_losses=per_sample,
                            hvp=hvp_operator(lambda th: per_sample(th).mean(), theta), val_gradient=lambda: g_val,
                            log_prob=lambda: space.log_prob(psi, latents), psi=psi, c_k=c_k, check_c_k=check)


@pytest.mark.parametrize("estimator", [linear, approx_quadratic])
def test_a_checked_central_difference_returns_the_jvps_estimate_and_its_own_error(estimator) -> None:
    exact = estimator(problem(torch.float64, 0.0, "jvp", False))
    checked = estimator(problem(torch.float64, 0.0, "central-difference", True))
    assert checked.diagnostics["c_k"] == "jvp"
    for k, g in exact.grad.items():
        torch.testing.assert_close(checked.grad[k], g, rtol=0, atol=0)
    # in float64 the difference is exact to ~1e-8 of max |c_k|: far inside the estimate's noise
    # (and inside the float32 rounding of psi's gradient, so it may show as 0)
    assert 0 <= checked.diagnostics["c_k_error_over_se"] < 1e-4
    unchecked = estimator(problem(torch.float64, 0.0, "central-difference", False))
    assert unchecked.diagnostics["c_k"] == "central-difference" and "c_k_error_over_se" not in unchecked.diagnostics
    for k, g in exact.grad.items():
        torch.testing.assert_close(unchecked.grad[k], g, rtol=1e-5, atol=1e-5 * float(exact.stderr[k].max()))


def test_rounded_losses_fail_the_check_and_switch_the_run_to_the_jvp() -> None:
    """float32 losses near 1e4 are rounded to ~1e-3: their central difference at a move of
    sqrt(eps) is noise, which the check sees against the jvp."""
    choice = CkChoice("auto")
    method, check = choice.next()
    assert (method, check) == ("central-difference", True)
    est = linear(problem(torch.float32, 1e4, method, check))
    assert est.diagnostics["c_k_error_over_se"] > CK_AUTO_TOLERANCE
    assert choice.update(est.diagnostics["c_k_error_over_se"]) is True
    assert choice.next() == ("jvp", False)
    # the same losses without the offset pass
    fine = CkChoice("auto")
    est = linear(problem(torch.float32, 0.0, *fine.next()))
    assert est.diagnostics["c_k_error_over_se"] < CK_AUTO_TOLERANCE
    assert fine.update(est.diagnostics["c_k_error_over_se"]) is False
    assert fine.next() == ("central-difference", False)


def test_auto_checks_on_the_first_iteration_and_every_tenth_and_named_methods_never() -> None:
    auto = CkChoice("auto")
    checks = [i for i in range(25) if auto.next()[1]]
    assert checks == [0, CK_AUTO_CHECK_EVERY, 2 * CK_AUTO_CHECK_EVERY]
    for setting in ("jvp", "central-difference"):
        named = CkChoice(setting)
        assert {named.next() for _ in range(12)} == {(setting, False)}
        assert named.update(100.0) is False
    with pytest.raises(ValueError, match="unknown c_k method 'exact'"):
        CkChoice("exact")


def test_a_run_draws_its_gradients_subset_per_iteration_and_checks_c_k_first(
        tmp_path: Path, cache_dir: Path, make_toy_data) -> None:
    data_ = make_toy_data(cache_dir, estimator="linear", iterations=3, val_count=50)
    data_["searcher"]["settings"].update(gradient_validation=20, c_k="auto")
    run = Run(parse_config(data_), tmp_path / "run")
    run.execute()
    history = [json.loads(line) for line in (tmp_path / "run" / HISTORY).read_text().splitlines() if line]
    assert [row["estimator"]["gradient_validation"] for row in history] == [20, 20, 20]
    assert [row["estimator"]["c_k"] for row in history] == ["jvp", "central-difference", "central-difference"]
    assert history[0]["estimator"]["c_k_error_over_se"] < CK_AUTO_TOLERANCE

    subsets = [validation_subset(run, 20, i) for i in (1, 2)]
    assert all(s is not None and len(set(s.tolist())) == 20 and int(s.max()) < 50 for s in subsets)
    assert not torch.equal(subsets[0], subsets[1])
    torch.testing.assert_close(validation_subset(run, 20, 1), subsets[0], rtol=0, atol=0)
    assert validation_subset(run, 50, 1) is None and validation_subset(run, None, 1) is None


def test_the_curvature_over_some_scenes_is_the_hessian_of_their_mean_loss(
        tmp_path: Path, cache_dir: Path, make_toy_data) -> None:
    data_ = make_toy_data(cache_dir, estimator="quadratic", iterations=2)
    data_["task"]["settings"] = {"hidden": 4}
    data_["searcher"]["settings"].update(curvature_scenes=5)
    run = Run(parse_config(data_), tmp_path / "run")
    run.execute()
    history = [json.loads(line) for line in (tmp_path / "run" / HISTORY).read_text().splitlines() if line]
    assert [row["estimator"]["curvature_scenes"] for row in history] == [5, 5]

    k = data_["searcher"]["settings"]["scenes_per_iteration"]
    rows = curvature_subset(run, 5, k, 1)
    assert rows is not None and len(set(rows.tolist())) == 5 and int(rows.max()) < k
    assert not torch.equal(rows, curvature_subset(run, 5, k, 2))
    torch.testing.assert_close(curvature_subset(run, 5, k, 1), rows, rtol=0, atol=0)
    assert curvature_subset(run, k, k, 1) is None and curvature_subset(run, None, k, 1) is None

    model = run.model
    assert model is not None
    model.eval()
    scenes, batch = run.render_training(run.psi, k)
    with torch.no_grad():
        log_q = run.log_prob(run.psi, scenes)
    pool = [Rendered(scenes, batch, log_q)]
    problem = hypergrad_problem(run, model, pool, baseline="none", reuse_clip=5.0, curvature_rows=rows)
    whole = hypergrad_problem(run, model, pool, baseline="none", reuse_clip=5.0)

    theta = problem.params
    names, shapes = list(theta), [theta[n].shape for n in theta]
    sizes = [theta[n].numel() for n in names]
    flat = torch.cat([theta[n].reshape(-1) for n in names]).double()

    def mean_loss(vector: torch.Tensor, part: Batch) -> torch.Tensor:
        params = {n: p.reshape(s) for n, p, s in zip(names, vector.split(sizes), shapes, strict=True)}
        outputs = functional_call(model, params, (part.inputs.double(),))
        return torch.nn.functional.cross_entropy(outputs, part.targets, reduction="none").mean()

    dense_subset = torch.autograd.functional.hessian(lambda x: mean_loss(x, batch.select(rows)), flat)
    dense_whole = torch.autograd.functional.hessian(lambda x: mean_loss(x, batch), flat)
    v = torch.randn(flat.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    v_tree = {n: p.reshape(s).float() for n, p, s in zip(names, v.split(sizes), shapes, strict=True)}
    got = torch.cat([problem.hvp(v_tree)[n].reshape(-1) for n in names]).double()
    torch.testing.assert_close(got, dense_subset @ v, rtol=1e-4, atol=1e-5)
    assert float((dense_subset @ v - dense_whole @ v).norm()) > 10 * float((got - dense_subset @ v).norm())
    got_whole = torch.cat([whole.hvp(v_tree)[n].reshape(-1) for n in names]).double()
    torch.testing.assert_close(got_whole, dense_whole @ v, rtol=1e-4, atol=1e-5)
