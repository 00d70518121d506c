"""The pathwise hypergradient on a differentiable toy renderer, against a finite difference of
the expected objective computed by Gauss-Hermite quadrature (accurate to ~1e-12 here).

Scene: a ~ Normal (clipped below), b ~ LogNormal, and in the mixed case a 3-way categorical
k that scales the image. The renderer makes x = (scale_k * a, sin(b), a * b); the task is a
small model with a tanh, so f = -grad_theta l(x, theta) . v is a smooth, non-polynomial
function of the continuous values. The estimator under test is the core's ``linear`` one on a
``HypergradProblem`` whose ``pathwise`` covers a and b: their (loc, log_std) coordinates get
the chain rule through the renderer, the categorical's logits the score function.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from autosim_core.contracts import HypergradProblem
from autosim_core.estimators import linear, no_val
from autosim_core.hypergrad import Params
from autosim_core.pathwise import Pathwise
from autosim_core.records import Batch, SceneBatch
from autosim_core.space import Categorical, LogNormal, Normal, ParameterSpace

SCALES = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
THETA = {"w": torch.tensor([0.8, -0.6, 0.4], dtype=torch.float64), "u": torch.tensor([0.5, 1.5, -1.0],
                                                                                        dtype=torch.float64)}
V = {"w": torch.tensor([0.3, 0.7, -0.2], dtype=torch.float64), "u": torch.tensor([-0.4, 0.2, 0.9],
                                                                                    dtype=torch.float64)}
TARGET = 0.3
Z = 4.5


def make_space(mixed: bool) -> ParameterSpace:
    params: dict[str, Any] = {"a": Normal(mean=0.4, std=0.6, low=-0.5), "b": LogNormal(median=0.8, std=0.3)}
    if mixed:
        params["k"] = Categorical(choices=["small", "mid", "large"], probs=[0.3, 0.5, 0.2])
    return ParameterSpace(params)


def image(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.stack([scale * a, torch.sin(b), a * b], dim=-1)


def losses_of(x: torch.Tensor, theta: Params) -> torch.Tensor:
    """A one-hidden-unit model: prediction u . tanh(w * x), squared error against TARGET."""
    pred = (theta["u"] * torch.tanh(theta["w"] * x)).sum(-1)
    return 0.5 * (pred - TARGET) ** 2


def f_of(x: torch.Tensor) -> torch.Tensor:
    """f = -grad_theta l . V for each row of x, written out by hand (not by autograd): with
    r = prediction - TARGET, dl/du_i = r tanh(w_i x_i) and dl/dw_i = r u_i x_i sech^2(w_i x_i)."""
    w, u = THETA["w"], THETA["u"]
    t = torch.tanh(w * x)
    r = (u * t).sum(-1, keepdim=True) - TARGET
    return -(r * t * V["u"] + r * u * x * (1 - t * t) * V["w"]).sum(-1)


def scale_of(records: list[dict[str, Any]]) -> torch.Tensor:
    index = {"small": 0, "mid": 1, "large": 2}
    return torch.stack([SCALES[index[r["k"]]] if "k" in r else SCALES[1] for r in records])


def render(records: list[dict[str, Any]], values: dict[str, torch.Tensor]) -> Batch:
    x = image(values["a"][:, 0].double(), values["b"][:, 0].double(), scale_of(records))
    return Batch(x, None)


def render_plain(records: list[dict[str, Any]]) -> Batch:
    a = torch.tensor([float(r["a"]) for r in records], dtype=torch.float64)
    b = torch.tensor([float(r["b"]) for r in records], dtype=torch.float64)
    return Batch(image(a, b, scale_of(records)), None)


def functional(batch: Batch) -> Any:
    return lambda theta: losses_of(batch.inputs, theta)


def problem(space: ParameterSpace, n: int, seed: int, *, pathwise: bool) -> HypergradProblem:
    psi = space.init_psi()
    gen = torch.Generator().manual_seed(seed)
    latents = space.sample(psi, n, gen)
    scenes = SceneBatch(latents, space.records(latents))
    batch = render_plain(scenes.records)
    return HypergradProblem(
        params={k: t.clone() for k, t in THETA.items()}, train_losses=functional(batch), hvp=lambda v: v,
        val_gradient=lambda: {k: t.clone() for k, t in V.items()},
        log_prob=lambda: space.log_prob(psi, latents), psi=psi, baseline="loo",
        pathwise=Pathwise(space, psi, scenes, ["a", "b"], render, functional, chunk=1000) if pathwise else None)


def expected_f(space: ParameterSpace, psi: dict[str, torch.Tensor]) -> float:
    """E[f] under q_psi by a tensor-product Gauss-Hermite rule over the two latents (and the
    exact sum over the categorical)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(60)
    z = torch.tensor(nodes, dtype=torch.float64)
    w = torch.tensor(weights / math.sqrt(2 * math.pi), dtype=torch.float64)
    za, zb = torch.meshgrid(z, z, indexing="ij")
    wab = (w[:, None] * w[None, :]).reshape(-1)
    a_lat = psi["a.loc"].double() + psi["a.log_std"].double().exp() * za.reshape(-1)
    b_lat = psi["b.loc"].double() + psi["b.log_std"].double().exp() * zb.reshape(-1)
    a = a_lat.clamp(min=-0.5)
    b = b_lat.exp()
    if "k.logits" in psi:
        probs = torch.softmax(psi["k.logits"].double(), -1)
        choices = list(enumerate(probs))
    else:
        choices = [(1, torch.tensor(1.0, dtype=torch.float64))]
    total = 0.0
    for j, p in choices:
        f = f_of(image(a, b, SCALES[j].expand_as(a)))
        total += float(p) * float((wab * f).sum())
    return total


def finite_difference(space: ParameterSpace, h: float = 1e-4) -> dict[str, torch.Tensor]:
    base = {k: v.detach().double() for k, v in space.init_psi().items()}
    out = {}
    for key, value in base.items():
        flat = value.reshape(-1)
        grad = torch.zeros_like(flat)
        for i in range(flat.numel()):
            plus = {k: v.clone() for k, v in base.items()}
            minus = {k: v.clone() for k, v in base.items()}
            plus[key].reshape(-1)[i] += h
            minus[key].reshape(-1)[i] -= h
            grad[i] = (expected_f(space, plus) - expected_f(space, minus)) / (2 * h)
        out[key] = grad.reshape(value.shape)
    return out


def check_unbiased(space: ParameterSpace, n: int, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    reference = finite_difference(space)
    est = linear(problem(space, n, seed, pathwise=True))
    assert est.stderr is not None
    for key, ref in reference.items():
        g, se = est.grad[key].double(), est.stderr[key].double()
        assert torch.all((g - ref).abs() <= Z * se + 1e-9), (key, g, ref, se)
    return {k: (est.grad[k], est.stderr[k]) for k in reference}


def test_the_pathwise_estimate_is_unbiased_against_a_finite_difference_of_the_expectation() -> None:
    space = make_space(mixed=False)
    pathwise = check_unbiased(space, 4000, seed=0)
    # the same scenes by the score function alone: unbiased too, but with a wider spread
    score = linear(problem(space, 4000, seed=0, pathwise=False))
    assert score.stderr is not None
    for key, (_, se) in pathwise.items():
        assert float(se) < 0.5 * float(score.stderr[key]), (key, se, score.stderr[key])


def test_a_discrete_parameter_keeps_the_score_function_beside_the_pathwise_ones() -> None:
    space = make_space(mixed=True)
    results = check_unbiased(space, 6000, seed=1)
    assert set(results) == {"a.loc", "a.log_std", "b.loc", "b.log_std", "k.logits"}
    # the logits are the score function's: the same numbers as without the pathwise part
    score = linear(problem(space, 6000, seed=1, pathwise=False))
    assert torch.allclose(results["k.logits"][0], score.grad["k.logits"])
    assert not torch.allclose(results["a.loc"][0], score.grad["a.loc"])


def test_a_checked_iteration_renders_the_pathwise_part_once_and_returns_the_jvps_estimate(
        monkeypatch: pytest.MonkeyPatch) -> None:
    space = make_space(mixed=True)
    calls = []
    terms = Pathwise.terms
    monkeypatch.setattr(Pathwise, "terms", lambda self, *a: calls.append(1) or terms(self, *a))
    checked = problem(space, 500, seed=3, pathwise=True)
    checked.c_k, checked.check_c_k = "central-difference", True
    est = linear(checked)
    assert len(calls) == 1 and est.diagnostics["c_k"] == "jvp"
    exact = problem(space, 500, seed=3, pathwise=True)
    exact.c_k = "jvp"
    reference = linear(exact)
    for key, g in reference.grad.items():
        torch.testing.assert_close(est.grad[key], g, rtol=0, atol=0)


def test_no_val_differentiates_the_training_loss_itself() -> None:
    """f = l for the no-val estimator: the pathwise terms of l against its quadrature."""
    space = make_space(mixed=False)
    est = no_val(problem(space, 4000, seed=2, pathwise=True))
    assert est.stderr is not None

    def expected_loss(psi: dict[str, torch.Tensor]) -> float:
        nodes, weights = np.polynomial.hermite_e.hermegauss(60)
        z = torch.tensor(nodes, dtype=torch.float64)
        w = torch.tensor(weights / math.sqrt(2 * math.pi), dtype=torch.float64)
        za, zb = (t.reshape(-1) for t in torch.meshgrid(z, z, indexing="ij"))
        wab = (w[:, None] * w[None, :]).reshape(-1)
        a = (psi["a.loc"] + psi["a.log_std"].exp() * za).clamp(min=-0.5)
        b = (psi["b.loc"] + psi["b.log_std"].exp() * zb).exp()
        return float((wab * losses_of(image(a, b, SCALES[1].expand_as(a)), THETA)).sum())

    base = {k: v.detach().double() for k, v in space.init_psi().items()}
    h = 1e-4
    for key in base:
        plus, minus = dict(base), dict(base)
        plus[key], minus[key] = base[key] + h, base[key] - h
        ref = (expected_loss(plus) - expected_loss(minus)) / (2 * h)
        assert abs(float(est.grad[key]) - ref) <= Z * float(est.stderr[key]) + 1e-9, (key, est.grad[key], ref)


def test_the_documented_figures_are_those_of_the_committed_json() -> None:
    """docs/hypergradient.md's pathwise table is what docs/results/pathwise.json holds."""
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    report = json.loads((root / "docs" / "results" / "pathwise.json").read_text())
    page = (root / "docs" / "hypergradient.md").read_text()
    for seed in ("0", "1"):
        entry = report[f"seed-{seed}"]["estimators"]["linear"]
        for option, x in entry["options"].items():
            p = x["pathwise_coordinates"]
            c, e = p["cosine_pathwise_reference"], p["relative_error_pathwise_reference"]
            row = (f"| {seed} | {option} | {x['scenes_scored']} | {c['mean']:.2f} ({c['min']:.2f} … {c['max']:.2f}) "
                   f"| {e['mean']:.2f} ± {e['std']:.2f} | {p['cosine']['mean']:.2f} "
                   f"| {p['relative_error']['mean']:.2f} | {x['cosine']['mean']:.2f} "
                   f"| {x['seconds']:.2f} + {x['render_seconds']:.2f} |")
            assert row in page, row
