"""Gauss-Newton products (``hypergrad.ggn_operator``) against a dense J^T H_out J built from the
full Jacobian and the output-space Hessian; the estimators' ``curvature`` option, and a toy run
with it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.func import functional_call, hessian, jacrev

from autosim_core.config import parse_config
from autosim_core.contracts import HypergradProblem
from autosim_core.estimators import approx_quadratic, quadratic
from autosim_core.hypergrad import ggn_operator, hvp_operator
from autosim_core.run import Run

DT = torch.float64


def mlp(norm: str | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = [torch.nn.Linear(3, 6)]
    if norm == "batch":
        layers.append(torch.nn.BatchNorm1d(6))
    elif norm == "group":
        layers.append(torch.nn.GroupNorm(2, 6))
    layers += [torch.nn.Tanh(), torch.nn.Linear(6, 4)]
    model = torch.nn.Sequential(*layers).double()
    if norm == "batch":
        model.train()
        model(torch.randn(32, 3, dtype=DT))  # running statistics away from their initial values
        model.eval()
    return model


def inputs(n: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, generator=gen, dtype=DT), torch.randint(0, 4, (n,), generator=gen)


def dense_ggn(outputs_fn, output_loss, theta: dict[str, torch.Tensor]) -> torch.Tensor:
    """J^T H_out J from the dense Jacobian of the outputs (outputs x parameters) and the dense
    Hessian of the loss in the outputs."""
    out = outputs_fn(theta)
    jac = jacrev(outputs_fn)(theta)
    j = torch.cat([jac[k].reshape(out.numel(), -1) for k in theta], dim=1)
    h_out = hessian(output_loss)(out).reshape(out.numel(), out.numel())
    return j.T @ h_out @ j


def flat(tree: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tree.values()])


@pytest.mark.parametrize("norm", [None, "group", "batch"])
def test_ggn_products_match_the_dense_gauss_newton_matrix(norm: str | None) -> None:
    model = mlp(norm)
    x, y = inputs()
    theta = {n: p.detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def outputs_fn(th: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(model, {**buffers, **th}, (x,))

    def output_loss(out: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(out, y)

    g = dense_ggn(outputs_fn, output_loss, theta)
    product = ggn_operator(outputs_fn, output_loss, theta)
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):  # the operator keeps its forward graph across products
        v = {k: torch.randn(t.shape, generator=gen, dtype=DT) for k, t in theta.items()}
        assert torch.allclose(flat(product(v)), g @ flat(v), rtol=1e-10, atol=1e-12)
    # positive semi-definite (cross-entropy is convex in the logits), unlike the Hessian here
    assert float(torch.linalg.eigvalsh((g + g.T) / 2).min()) > -1e-12


def test_for_a_linear_model_with_squared_error_it_is_the_hessian() -> None:
    x, _ = inputs()
    y = torch.randn(len(x), 2, dtype=DT, generator=torch.Generator().manual_seed(3))
    model = torch.nn.Linear(3, 2).double()
    theta = {n: p.detach() for n, p in model.named_parameters()}

    def outputs_fn(th: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(model, th, (x,))

    def output_loss(out: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((out - y) ** 2).sum(-1).mean()

    v = {k: torch.randn_like(t) for k, t in theta.items()}
    gv = ggn_operator(outputs_fn, output_loss, theta)(v)
    hv = hvp_operator(lambda th: output_loss(outputs_fn(th)), theta)(v)
    for k in theta:
        assert torch.allclose(gv[k], hv[k], rtol=1e-12, atol=1e-12)


def _problem(ggn) -> HypergradProblem:
    x, y = inputs()
    model = mlp()
    theta = {n: p.detach() for n, p in model.named_parameters()}

    def per_sample(th: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(functional_call(model, th, (x,)), y, reduction="none")

    psi = {"a.loc": torch.tensor(0.0, dtype=DT, requires_grad=True)}
    scores = torch.linspace(-1, 1, len(x), dtype=DT)
    return HypergradProblem(
        params=theta, train_losses=per_sample, hvp=hvp_operator(lambda th: per_sample(th).mean(), theta),
        val_gradient=lambda: {k: torch.ones_like(t) for k, t in theta.items()},
        log_prob=lambda: psi["a.loc"] * scores, psi=psi, ggn=ggn)


def test_the_curvature_option_picks_the_products_and_refuses_what_is_missing() -> None:
    calls: list[int] = []
    base = _problem(None)

    def counted(v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        calls.append(1)
        return base.hvp(v)

    # the estimators use the products they are told to: here the Hessian's, under the GGN's name
    est_g = approx_quadratic(_problem(counted), curvature="gauss-newton")
    est_h = approx_quadratic(base)
    assert calls == [1]
    assert torch.allclose(est_g.grad["a.loc"], est_h.grad["a.loc"])
    quadratic(_problem(counted), curvature="gauss-newton", max_iter=3)
    assert len(calls) > 1
    with pytest.raises(ValueError, match=r"gauss-newton.*curvature 'hessian'"):
        quadratic(base, curvature="gauss-newton")
    with pytest.raises(ValueError, match="unknown curvature"):
        approx_quadratic(base, curvature="fisher")


@pytest.mark.parametrize("estimator", ["quadratic", "approx-quadratic"])
def test_a_toy_run_with_gauss_newton_curvature(tmp_path: Path, cache_dir: Path, make_toy_data,
                                               estimator: str) -> None:
    """Through the run's own problem (Training.ggn_operator) on the toy's MLP: the GGN is PSD,
    so CG never meets negative curvature, and psi moves."""
    data = make_toy_data(cache_dir, estimator=estimator, iterations=2, val_count=64)
    data["estimator"] = {"name": estimator, "settings": {"curvature": "gauss-newton"}}
    data["task"]["settings"] = {"hidden": 8}
    data["searcher"].setdefault("settings", {})["scenes_per_iteration"] = 16
    summary = Run(parse_config(data), tmp_path / "run").execute()
    assert summary["iterations"] == 2
    assert summary["psi"]["x1"]["mean"] != summary["psi_start"]["x1"]["mean"]
    if estimator == "quadratic":
        rows = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
        assert all(not r["estimator"]["negative_curvature"] for r in rows)
