"""The closed forms benchmarks/convergence.py stands on: theta_hat(psi) from moments against a
least-squares fit to many sampled scenes, and the validation gradient zero at psi* where the
benchmark says the optimum is reachable."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import convergence

PROBLEMS = {p.name: p for p in convergence.problems()}


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_theta_hat_is_the_least_squares_fit_to_sampled_scenes(name: str) -> None:
    problem = PROBLEMS[name]
    psi = {k: v.detach().double() for k, v in problem.space.init_psi().items()}
    latents = problem.space.sample(psi, 400_000, torch.Generator().manual_seed(0))
    losses = problem.per_sample(latents)
    theta = problem.theta_hat(psi)
    # the mean sampled loss is least at theta_hat: its gradient there is sampling noise only
    t = theta["theta"].clone().requires_grad_()
    (g,) = torch.autograd.grad(losses({"theta": t}).mean(), t)
    scale = float(losses({"theta": theta["theta"]}).mean())
    assert float(g.abs().max()) < 0.05 * max(scale, 1.0), (name, g)


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_the_optimum_zeroes_the_validation_gradient_where_reachable(name: str) -> None:
    problem = PROBLEMS[name]
    target = problem.optimum()
    g = problem.val_gradient(problem.theta_hat(target))["theta"]
    if problem.reachable:
        assert float(g.norm()) < 1e-6
    else:
        assert float(g.norm()) > 0.1  # no psi fits the validation labels
        # ... and psi* is a minimum of the closed-form outer loss: no nearby point is lower
        learn = problem.space.learnable(target)
        best = float(problem.outer(target))
        for k in learn:
            for h in (-1e-2, 1e-2):
                moved = dict(target)
                moved[k] = target[k] + h
                assert float(problem.outer(moved)) >= best - 1e-12
    assert math.isfinite(float(problem.outer(target)))
