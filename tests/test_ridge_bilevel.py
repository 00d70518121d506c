"""The estimators on a bilevel problem whose inner solution is known in closed form.

Scenes x ~ N(mu, sigma) (psi = (mu, log sigma), a Normal of space.py), the renderer gives the
example (x, y = x^2), the model is ridge regression y ~ w x + b with per-sample loss
l = (w x + b - y)^2 / 2 + lam (w^2 + b^2) / 2. Its population optimum is
theta_hat(psi) = (M + lam I)^-1 m with M = E[(x,1)(x,1)^T], m = E[(x y, y)], Gaussian moments.
L_val is a fixed validation set. The exact hypergradient is autograd through the closed form;
the estimators get K sampled scenes and only what a run gives them (per-sample losses, HVPs,
the validation gradient, log q). Tolerances come from the delta-method standard error of each
estimator, computed per sample in closed form.
"""

from __future__ import annotations

import math

import pytest
import torch

from autosim_core.estimators import HypergradProblem, approx_quadratic, linear, no_val, quadratic
from autosim_core.hypergrad import default_hvp, loss_gradient
from autosim_core.space import Normal, ParameterSpace

LAM = 0.1
MU, SIGMA = 0.8, 0.6
K = 200_000
Z = 4.5
DT = torch.float64


def moments(mu: torch.Tensor, log_sigma: torch.Tensor) -> tuple[torch.Tensor, ...]:
    s2 = torch.exp(2 * log_sigma)
    return (mu, mu**2 + s2, mu**3 + 3 * mu * s2, mu**4 + 6 * mu**2 * s2 + 3 * s2**2)


def population(mu: torch.Tensor, log_sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """M + lam I, m and E[y^2] of the training distribution at psi."""
    e1, e2, e3, e4 = moments(mu, log_sigma)
    one = torch.ones((), dtype=DT)
    a = torch.stack([torch.stack([e2 + LAM, e1]), torch.stack([e1, one + LAM])])
    return a, torch.stack([e3, e2]), e4


def theta_hat(mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    a, m, _ = population(mu, log_sigma)
    return torch.linalg.solve(a, m)


def validation_set() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(123)
    xv = 0.2 + 1.0 * torch.randn(64, generator=gen, dtype=DT)
    return xv, xv**2


def val_loss(theta: torch.Tensor) -> torch.Tensor:
    xv, yv = validation_set()
    return 0.5 * ((theta[0] * xv + theta[1] - yv) ** 2).mean()


def outer(psi_vec: torch.Tensor) -> torch.Tensor:
    return val_loss(theta_hat(psi_vec[0], psi_vec[1]))


PSI0 = torch.tensor([MU, math.log(SIGMA)], dtype=DT)


def exact_hypergradient() -> torch.Tensor:
    p = PSI0.clone().requires_grad_()
    (g,) = torch.autograd.grad(outer(p), p)
    return g


def finite_differences(h: float = 1e-5) -> torch.Tensor:
    out = torch.zeros(2, dtype=DT)
    for i in range(2):
        e = torch.zeros(2, dtype=DT)
        e[i] = h
        out[i] = (outer(PSI0 + e) - outer(PSI0 - e)) / (2 * h)
    return out


def as_dict(theta: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"weight": theta[:1].clone(), "bias": theta[1:].clone()}


def as_vec(tree: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([tree["weight"].reshape(-1), tree["bias"].reshape(-1)])


class Setup:
    """One sample of K scenes at PSI0 and the HypergradProblem a run would build from it."""

    def __init__(self, seed: int = 0):
        self.space = ParameterSpace(x=Normal(mean=MU, std=SIGMA))
        self.psi = {k: v.detach().to(DT).requires_grad_() for k, v in self.space.init_psi().items()}
        self.latents = self.space.sample(self.psi, K, torch.Generator().manual_seed(seed))
        self.x = self.latents["x"][:, 0].to(DT)
        self.theta0 = theta_hat(PSI0[0], PSI0[1]).detach()
        x = self.x

        def train_losses(th: dict[str, torch.Tensor]) -> torch.Tensor:
            w, b = th["weight"][0], th["bias"][0]
            return 0.5 * (w * x + b - x**2) ** 2 + 0.5 * LAM * (w**2 + b**2)

        params = as_dict(self.theta0)
        self.problem = HypergradProblem(
            params=params,
            train_losses=train_losses,
            hvp=lambda v: default_hvp(lambda th: train_losses(th).mean(), params, v),
            val_gradient=lambda: loss_gradient(lambda th: val_loss(as_vec(th)), params),
            log_prob=lambda: self.space.log_prob(self.psi, self.latents),
            psi=self.psi,
        )
        # closed-form per-sample pieces, for the standard errors
        self.phi = torch.stack([x, torch.ones_like(x)], dim=1)  # (K, 2) features
        self.resid = self.phi @ self.theta0 - x**2
        self.a = self.resid[:, None] * self.phi + LAM * self.theta0  # grad_theta l_k
        z = (x - MU) / SIGMA
        self.score = torch.stack([z / SIGMA, z**2 - 1], dim=1)  # grad_psi log q(x_k)
        self.h_k = self.phi[:, :, None] * self.phi[:, None, :] + LAM * torch.eye(2, dtype=DT)  # per-sample Hessians
        self.h = self.h_k.mean(0)
        self.g_val = as_vec(self.problem.val_gradient())
        self.cross = (self.score[:, :, None] * (self.a - self.a.mean(0))[:, None, :]).mean(0)  # (2 psi, 2 theta)

    def hessian_influence(self, h_damped: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Per-sample effect on -cross v of v = h_damped^-1 g_val through the sample Hessian."""
        dv = -torch.linalg.solve(h_damped, ((self.h_k - self.h) @ v).T)  # (2, K)
        return -(self.cross @ dv).T

    def grad(self, estimate) -> torch.Tensor:
        return torch.stack([estimate.grad["x.loc"], estimate.grad["x.log_std"]]).to(DT)

    def first_order_influence(self, v: torch.Tensor) -> torch.Tensor:
        """Per-sample terms of -(1/K) sum (c_k - b) grad log q with v held fixed."""
        c = self.a @ v
        return -(c - c.mean())[:, None] * self.score


def assert_within(estimate: torch.Tensor, target: torch.Tensor, influence: torch.Tensor, extra: float = 0.0) -> None:
    se = influence.std(0) / math.sqrt(influence.shape[0])
    err = (estimate - target).abs()
    assert torch.all(err <= Z * se + extra), f"estimate {estimate} target {target} se {se}"
    assert torch.all(se < 0.1 * target.abs()), f"the check has no power: se {se} target {target}"


@pytest.fixture(scope="module")
def setup() -> Setup:
    return Setup()


def test_closed_form_gradient_matches_finite_differences() -> None:
    exact, fd = exact_hypergradient(), finite_differences()
    torch.testing.assert_close(exact, fd, rtol=1e-6, atol=1e-9)
    assert torch.all(exact.abs() > 0.05)  # a problem where psi matters


def test_theta_hat_is_the_stationary_point_of_the_sample_loss_in_the_limit(setup: Setup) -> None:
    """Sanity of the set-up: the sample gradient at theta_hat(psi) vanishes within MC error."""
    g = setup.a.mean(0)
    se = setup.a.std(0) / math.sqrt(K)
    assert torch.all(g.abs() <= Z * se)


def test_quadratic_estimator_matches_implicit_gradient_and_finite_differences(setup: Setup) -> None:
    est = quadratic(setup.problem, damping=0.0, max_iter=10, tol=1e-12)
    assert est.diagnostics["cg_iterations"] <= 3 and not est.diagnostics["negative_curvature"]
    assert est.diagnostics["cg_residual"] < 1e-8
    g = setup.grad(est)
    v = torch.linalg.solve(setup.h, setup.g_val)
    # delta method: the c_k term with v fixed, plus the effect of the sample Hessian on v
    influence = setup.first_order_influence(v) + setup.hessian_influence(setup.h, v)
    assert_within(g, exact_hypergradient(), influence)
    assert_within(g, finite_differences(), influence, extra=1e-6)


def test_quadratic_estimator_with_damping_uses_h_plus_lambda(setup: Setup) -> None:
    """With damping d the estimator targets the implicit gradient with H replaced by H + d I."""
    d = 0.5
    est = quadratic(setup.problem, damping=d, max_iter=10, tol=1e-12)
    eye = torch.eye(2, dtype=DT)
    a, _, _ = population(PSI0[0], PSI0[1])
    v_pop = torch.linalg.solve(a + d * eye, setup.g_val)
    target = -(population_cross(setup.theta0) @ v_pop)
    v = torch.linalg.solve(setup.h + d * eye, setup.g_val)
    influence = setup.first_order_influence(v) + setup.hessian_influence(setup.h + d * eye, v)
    assert_within(setup.grad(est), target, influence)
    undamped = exact_hypergradient()
    assert not torch.allclose(target, undamped, rtol=0.1)  # damping really changes the answer


def population_cross(theta: torch.Tensor) -> torch.Tensor:
    """d/d psi of grad_theta E_psi[l(theta)] at PSI0, theta held fixed: shape (2 psi, 2 theta)."""
    def g_train(p: torch.Tensor) -> torch.Tensor:
        a, m, _ = population(p[0], p[1])
        return a @ theta - m
    return torch.autograd.functional.jacobian(g_train, PSI0.clone()).T


def test_implicit_gradient_is_what_the_estimators_estimate() -> None:
    """-(d/dpsi grad_theta E l)^T H^-1 g_val equals the closed-form chain rule (the IFT)."""
    theta0 = theta_hat(PSI0[0], PSI0[1]).detach()
    a, _, _ = population(PSI0[0], PSI0[1])
    p = theta0.clone().requires_grad_()
    (g_val,) = torch.autograd.grad(val_loss(p), p)
    ift = -(population_cross(theta0) @ torch.linalg.solve(a, g_val))
    torch.testing.assert_close(ift, exact_hypergradient(), rtol=1e-10, atol=1e-12)


def test_linear_estimator_matches_its_expectation(setup: Setup) -> None:
    """v = g_val: the expectation is -(d/dpsi grad_theta E l)^T g_val."""
    g = setup.grad(linear(setup.problem))
    target = -(population_cross(setup.theta0) @ setup.g_val)
    assert_within(g, target, setup.first_order_influence(setup.g_val))


def test_approx_quadratic_estimator_matches_its_expectation(setup: Setup) -> None:
    """v = H g_val (descent sign, as documented): the expectation is -(d/dpsi grad E l)^T H g_val."""
    g = setup.grad(approx_quadratic(setup.problem, damping=0.0))
    a, _, _ = population(PSI0[0], PSI0[1])
    target = -(population_cross(setup.theta0) @ (a @ setup.g_val))
    v = setup.h @ setup.g_val
    influence = setup.first_order_influence(v) - (setup.cross @ ((setup.h_k - setup.h) @ setup.g_val).T).T
    assert_within(g, target, influence)


def test_no_val_estimator_is_the_gradient_of_the_expected_training_loss(setup: Setup) -> None:
    est = no_val(setup.problem)
    g = setup.grad(est)
    theta0 = setup.theta0

    def expected_loss(p: torch.Tensor) -> torch.Tensor:
        a, m, e4 = population(p[0], p[1])
        return 0.5 * theta0 @ a @ theta0 - theta0 @ m + 0.5 * e4

    target = torch.autograd.functional.jacobian(expected_loss, PSI0.clone())
    losses = setup.problem.train_losses(setup.problem.params)
    influence = (losses - losses.mean())[:, None] * setup.score
    assert_within(g, target, influence)
    assert est.diagnostics["train_loss_mean"] == pytest.approx(float(losses.mean()))


def test_no_val_needs_no_validation_set_and_the_others_do(setup: Setup) -> None:
    p = setup.problem
    blind = HypergradProblem(p.params, p.train_losses, p.hvp, None, p.log_prob, p.psi)
    assert set(no_val(blind).grad) == {"x.loc", "x.log_std"}
    for estimator in (quadratic, approx_quadratic, linear):
        with pytest.raises(ValueError, match="needs a validation set"):
            estimator(blind)
