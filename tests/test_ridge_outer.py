"""The whole outer loop on the core's ridge bilevel problem (tests/test_ridge_bilevel.py): every
validation-based estimator, with the searcher's default psi step, reaches the known optimum.

The inner problem is solved exactly at every iteration (theta = theta_hat(psi), closed form),
so the test measures the outer method: K sampled scenes, the estimator, PsiStep. The optimum
psi* minimises the closed-form outer loss; there the validation gradient itself vanishes
(the validation set's best ridge fit is reachable), so it is a fixed point of every estimator,
not only of the exact hypergradient.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_ridge_bilevel import DT, LAM, MU, SIGMA, as_dict, as_vec, theta_hat, val_loss

from autosim_core.estimators import HypergradProblem, approx_quadratic, linear, quadratic
from autosim_core.hypergrad import default_hvp, loss_gradient
from autosim_core.searchers import AutoSimulateSettings, PsiStep
from autosim_core.space import Normal, ParameterSpace

K = 32
ITERATIONS = 200
TOLERANCE = 0.05


def optimum() -> torch.Tensor:
    p = torch.tensor([MU, math.log(SIGMA)], dtype=DT, requires_grad=True)
    opt = torch.optim.LBFGS([p], max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-15,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = val_loss(theta_hat(p[0], p[1]))
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    return p.detach()


def test_the_optimum_is_a_fixed_point_of_every_estimator() -> None:
    p = optimum()
    th = theta_hat(p[0], p[1]).requires_grad_()
    (g_val,) = torch.autograd.grad(val_loss(th), th)
    assert float(g_val.norm()) < 1e-6
    assert float((p - torch.tensor([MU, math.log(SIGMA)], dtype=DT)).norm()) > 0.5  # far from the start


def outer_loop(estimator, settings: AutoSimulateSettings, seed: int) -> torch.Tensor:
    space = ParameterSpace(x=Normal(mean=MU, std=SIGMA))
    psi = {k: v.detach().to(DT).requires_grad_() for k, v in space.init_psi().items()}
    step = PsiStep(space, psi, settings)
    gen = torch.Generator().manual_seed(seed)
    path = []
    for _ in range(ITERATIONS):
        theta = as_dict(theta_hat(psi["x.loc"].detach(), psi["x.log_std"].detach()))
        latents = space.sample(psi, K, gen)
        x = latents["x"][:, 0].to(DT)

        def train_losses(th: dict[str, torch.Tensor], x: torch.Tensor = x) -> torch.Tensor:
            w, b = th["weight"][0], th["bias"][0]
            return 0.5 * (w * x + b - x**2) ** 2 + 0.5 * LAM * (w**2 + b**2)

        problem = HypergradProblem(
            params=theta, train_losses=train_losses,
            hvp=lambda v, th=theta, f=train_losses: default_hvp(lambda p: f(p).mean(), th, v),
            val_gradient=lambda th=theta: loss_gradient(lambda p: val_loss(as_vec(p)), th),
            log_prob=lambda lat=latents: space.log_prob(psi, lat), psi=psi, baseline=settings.resolved_baseline())
        step(estimator(problem).grad)
        path.append(torch.stack([psi["x.loc"].detach(), psi["x.log_std"].detach()]))
    return torch.stack(path)


@pytest.mark.parametrize("name,estimator", [
    ("quadratic", lambda p: quadratic(p, damping=0.0)),
    ("approx-quadratic", approx_quadratic),
    ("linear", linear),
])
def test_every_estimator_reaches_the_optimum(name: str, estimator) -> None:
    target = optimum()
    path = outer_loop(estimator, AutoSimulateSettings(), seed=0)
    distance = (path - target).norm(dim=1)
    assert float(distance[0]) > 0.4
    assert float(distance[-20:].max()) < TOLERANCE, f"{name}: {distance[-20:]}"
