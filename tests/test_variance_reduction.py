"""Variance-reduction options of the score-function hypergradient on a problem whose gradient
is known in closed form: s = (x, c), x ~ N(mu, sigma), c ~ Categorical(p), f(s) = x^2 + F[c], so

    d E[f] / d(mu, log sigma) = (2 mu, 2 sigma^2),   d E[f] / d logits = p * (F - p.F).

Each option's mean over many independent draws is compared with that gradient (within Z
standard errors of the mean over draws), and its spread with the plain estimator's."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from autosim_core.hypergrad import baselines, importance_weights, score_function_gradient, score_function_terms
from autosim_core.space import Categorical, Normal, ParameterSpace

MU, SIGMA = 0.7, 0.9
PROBS = [0.2, 0.5, 0.3]
F = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
K = 16
DRAWS = 3000
Z = 4.5


def space(mu: float = MU, sigma: float = SIGMA) -> ParameterSpace:
    return ParameterSpace(x=Normal(mean=mu, std=sigma), c=Categorical(choices=["a", "b", "c"], probs=PROBS))


def exact() -> torch.Tensor:
    p = torch.tensor(PROBS, dtype=torch.float64)
    return torch.cat([torch.tensor([2 * MU, 2 * SIGMA**2], dtype=torch.float64), p * (F - (p * F).sum())])


def f(latents: dict[str, torch.Tensor]) -> torch.Tensor:
    return latents["x"][:, 0].double() ** 2 + F[latents["c"][:, 0]]


def flat(g: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([g["x.loc"].reshape(1), g["x.log_std"].reshape(1), g["c.logits"]]).double()


Estimator = Callable[[torch.Generator], torch.Tensor]


def draws(estimator: Estimator, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([estimator(gen) for _ in range(DRAWS)])


def plain(gen: torch.Generator) -> torch.Tensor:
    """No baseline: the textbook estimator, unbiased by construction."""
    sp = space()
    psi = sp.init_psi()
    lat = sp.sample(psi, K, gen)
    return flat(score_function_terms(f(lat), sp.log_prob(psi, lat), psi, baseline="none").grad)


def with_options(baseline: str, sampling: str = "iid") -> Estimator:
    def estimator(gen: torch.Generator) -> torch.Tensor:
        sp = space()
        psi = sp.init_psi()
        lat = sp.sample_quasi(psi, K, gen) if sampling == "sobol" else sp.sample(psi, K, gen)
        return flat(score_function_terms(f(lat), sp.log_prob(psi, lat), psi, baseline=baseline).grad)  # type: ignore[arg-type]

    return estimator


OLD = [(0.6, 1.0), (0.8, 0.8), (0.5, 0.9)]


def reused(gen: torch.Generator, olds: list[tuple[float, float]] = OLD, clip: float = 5.0) -> torch.Tensor:
    """K scenes from q_psi plus K from each earlier psi, importance-weighted for q_psi."""
    sp = space()
    psi = sp.init_psi()
    batches = [(sp.sample(psi, K, gen), None)]
    for mu, sigma in olds:
        old_sp = space(mu, sigma)
        old_psi = old_sp.init_psi()
        lat = old_sp.sample(old_psi, K, gen)
        batches.append((lat, old_sp.log_prob(old_psi, lat).detach()))
    lat = {k: torch.cat([b[0][k] for b in batches]) for k in ("x", "c")}
    log_q = sp.log_prob(psi, lat)
    log_q_old = torch.cat([log_q[:K].detach(), *(b[1] for b in batches[1:])])
    w = importance_weights(log_q, log_q_old, clip)
    return flat(score_function_terms(f(lat), log_q, psi, baseline="loo", weights=w).grad)


def check_unbiased(samples: torch.Tensor, target: torch.Tensor) -> None:
    se = samples.std(0) / math.sqrt(samples.shape[0])
    err = (samples.mean(0) - target).abs()
    assert torch.all(err <= Z * se), f"mean {samples.mean(0)} target {target} se {se}"


@pytest.fixture(scope="module")
def plain_draws() -> torch.Tensor:
    return draws(plain)


def test_plain_estimator_is_unbiased(plain_draws: torch.Tensor) -> None:
    check_unbiased(plain_draws, exact())


@pytest.mark.parametrize("name,estimator", [
    ("loo", with_options("loo")),
    ("sobol", with_options("none", "sobol")),
    ("reuse+loo", reused),
])
def test_option_is_unbiased_and_lowers_the_variance(name: str, estimator: Estimator, plain_draws: torch.Tensor) -> None:
    samples = draws(estimator, seed=1)
    check_unbiased(samples, exact())
    # the difference of the two means is within the combined standard error
    se = torch.sqrt(samples.var(0) / DRAWS + plain_draws.var(0) / DRAWS)
    assert torch.all((samples.mean(0) - plain_draws.mean(0)).abs() <= Z * se)
    assert torch.all(samples.var(0) < 0.8 * plain_draws.var(0)), f"{name}: {samples.var(0)} vs {plain_draws.var(0)}"


def test_batch_mean_baseline_shrinks_the_gradient_by_k_minus_1_over_k() -> None:
    """The batch mean includes f_k itself: E[g] = (K - 1) / K times the gradient. Leave-one-out
    is the same estimate scaled by K / (K - 1)."""
    samples = draws(with_options("mean"), seed=2)
    check_unbiased(samples, exact() * (K - 1) / K)
    sp = space()
    psi = sp.init_psi()
    lat = sp.sample(psi, K, torch.Generator().manual_seed(5))
    lp = sp.log_prob(psi, lat)
    mean = flat(score_function_terms(f(lat), lp, psi, baseline="mean").grad)
    loo = flat(score_function_terms(f(lat), lp, psi, baseline="loo").grad)
    torch.testing.assert_close(loo, mean * K / (K - 1))
    torch.testing.assert_close(mean, flat(score_function_gradient(f(lat), lp, psi)))


def test_a_baseline_from_a_sobol_batch_is_biased() -> None:
    """Why Sobol sampling goes without a baseline: the other scenes of a stratified batch are
    correlated with each scene's score, so a baseline computed from them shifts the mean."""
    samples = draws(with_options("loo", "sobol"), seed=1)
    se = samples.std(0) / math.sqrt(DRAWS)
    assert float(((samples.mean(0) - exact()).abs() / se).max()) > 2 * Z


def test_baselines_against_brute_force() -> None:
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(7, generator=gen, dtype=torch.float64)
    w = torch.rand(7, generator=gen, dtype=torch.float64) + 0.5
    loo = baselines(v, "loo", w)
    for k in range(7):
        others = [i for i in range(7) if i != k]
        assert float(loo[k]) == pytest.approx(float((w[others] * v[others]).sum() / w[others].sum()))
    torch.testing.assert_close(baselines(v, "mean", w), ((w * v).sum() / w.sum()).expand(7))
    torch.testing.assert_close(baselines(v, "none"), torch.zeros(7, dtype=torch.float64))


def test_reuse_with_psi_unchanged_equals_plain_reuse() -> None:
    """Old scenes drawn at the current psi get weight 1: the same as pooling them unweighted."""
    sp = space()
    psi = sp.init_psi()
    gen = torch.Generator().manual_seed(3)
    lat = sp.sample(psi, 4 * K, gen)
    log_q = sp.log_prob(psi, lat)
    w = importance_weights(log_q, log_q.detach(), clip=5.0)
    torch.testing.assert_close(w, torch.ones(4 * K, dtype=torch.float64))
    for baseline in ("mean", "loo", "none"):
        weighted = score_function_terms(f(lat), log_q, psi, baseline=baseline, weights=w)  # type: ignore[arg-type]
        pooled = score_function_terms(f(lat), log_q, psi, baseline=baseline)  # type: ignore[arg-type]
        for key in pooled.grad:
            torch.testing.assert_close(weighted.grad[key], pooled.grad[key])


def test_importance_weights_are_clipped_then_self_normalised() -> None:
    gen = torch.Generator().manual_seed(1)
    log_new = 2 * torch.randn(50, generator=gen, dtype=torch.float64)
    log_old = torch.zeros(50, dtype=torch.float64)
    w = importance_weights(log_new, log_old, clip=3.0)
    raw = log_new.exp()
    assert bool((raw > 3.0).any())
    clipped = raw.clamp(max=3.0)
    torch.testing.assert_close(w, clipped / clipped.mean())
    assert float(w.mean()) == pytest.approx(1.0)
    assert float(w.max() * clipped.mean()) <= 3.0 + 1e-12  # no raw ratio above the clip survives


def test_stderr_matches_the_spread_over_draws(plain_draws: torch.Tensor) -> None:
    """The per-iteration noise estimate (standard error from the K terms) agrees on average
    with the real spread of the estimate over independent draws."""
    gen = torch.Generator().manual_seed(7)
    sp = space()
    psi = sp.init_psi()
    ses = []
    for _ in range(400):
        lat = sp.sample(psi, K, gen)
        ses.append(flat(score_function_terms(f(lat), sp.log_prob(psi, lat), psi, baseline="none").stderr()))
    rms_se = torch.stack(ses).pow(2).mean(0).sqrt()
    torch.testing.assert_close(rms_se, plain_draws.std(0), rtol=0.1, atol=0.0)
