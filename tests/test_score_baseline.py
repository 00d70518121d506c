"""The score-function baselines on K = 3 against values centred by hand, and the variance
they remove, measured over seeded draws against its closed form."""

from __future__ import annotations

import math

import pytest
import torch

from autosim_core.estimators import HypergradProblem, no_val
from autosim_core.hypergrad import baselines, score_function_gradient, score_function_terms

# log q_psi(s_k) = SCORES[k] . psi, so grad_psi log q_psi(s_k) = SCORES[k] exactly.
SCORES = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], dtype=torch.float64)
VALUES = torch.tensor([1.0, 4.0, 7.0], dtype=torch.float64)
WEIGHTS = torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64)  # mean 1


def psi_and_log_prob() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    psi = {"a": torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True),
           "frozen": torch.tensor([1.0], dtype=torch.float64)}
    return psi, SCORES @ psi["a"]


# Worked by hand:
#   mean:          b = 4;                  f - b = (-3, 0, 3)      -> (-3 (1,0) + 3 (1,1)) / 3 = (0, 1)
#   none:          f = (1, 4, 7)           -> ((1,0) + (0,8) + (7,7)) / 3 = (8/3, 5)
#   loo:           b = (5.5, 4, 2.5);      f - b = (-4.5, 0, 4.5)  -> (0, 4.5) / 3 = (0, 1.5)
#   weighted mean: b = (0.5 + 4 + 10.5)/3 = 5;  w (f - b) = (-2, -1, 3) -> (-2 + 3, -2 + 3) / 3 = (1, 1) / 3
#   weighted loo:  b_k = (15 - w_k f_k) / (3 - w_k) = (5.8, 5.5, 3)
#                  w (f - b) = (-2.4, -1.5, 6) -> (-2.4 + 6, -3 + 6) / 3 = (1.2, 1)
CASES = [
    ("mean", None, (-3.0, 0.0, 3.0), (0.0, 1.0)),
    ("none", None, (1.0, 4.0, 7.0), (8 / 3, 5.0)),
    ("loo", None, (-4.5, 0.0, 4.5), (0.0, 1.5)),
    ("mean", WEIGHTS, (-2.0, -1.0, 3.0), (1 / 3, 1 / 3)),
    ("loo", WEIGHTS, (-2.4, -1.5, 6.0), (1.2, 1.0)),
]


@pytest.mark.parametrize(("kind", "weights", "factors", "expected"), CASES)
def test_score_function_terms_against_hand_centred_values(kind, weights, factors, expected) -> None:
    psi, log_prob = psi_and_log_prob()
    est = score_function_terms(VALUES, log_prob, psi, baseline=kind, weights=weights)
    assert set(est.grad) == {"a"}
    torch.testing.assert_close(est.grad["a"], torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)
    hand_terms = torch.tensor(factors, dtype=torch.float64)[:, None] * SCORES
    torch.testing.assert_close(est.terms["a"], hand_terms, rtol=0, atol=1e-12)
    # The standard error is the terms' sample std over sqrt(K).
    torch.testing.assert_close(est.stderr()["a"], hand_terms.std(dim=0) / math.sqrt(3), rtol=0, atol=1e-12)


@pytest.mark.parametrize(("kind", "weights", "expected"), [
    ("mean", None, (4.0, 4.0, 4.0)),
    ("loo", None, (5.5, 4.0, 2.5)),
    ("none", None, (0.0, 0.0, 0.0)),
    ("mean", WEIGHTS, (5.0, 5.0, 5.0)),
    ("loo", WEIGHTS, (5.8, 5.5, 3.0)),
])
def test_baselines_by_hand(kind, weights, expected) -> None:
    torch.testing.assert_close(baselines(VALUES, kind, weights), torch.tensor(expected, dtype=torch.float64),
                               rtol=0, atol=1e-12)


def test_unknown_baseline_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown baseline 'median'; allowed: mean, loo, none"):
        baselines(VALUES, "median")  # type: ignore[arg-type]


@pytest.mark.parametrize(("baseline", "expected"), [(True, (0.0, 1.0)), (False, (8 / 3, 5.0))])
def test_score_function_gradient_against_hand_centred_values(baseline: bool, expected) -> None:
    psi, log_prob = psi_and_log_prob()
    grad = score_function_gradient(VALUES, log_prob, psi, baseline=baseline)
    torch.testing.assert_close(grad["a"], torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)


def test_no_val_scores_the_training_losses_with_the_problems_baseline() -> None:
    """no-val's hypergradient is the score-function sum over the per-scene training losses, with
    the problem's baseline and importance weights."""
    for kind, weights, _, expected in CASES:
        psi, _ = psi_and_log_prob()
        problem = HypergradProblem(
            params={"w": torch.zeros(1, dtype=torch.float64)}, train_losses=lambda th: VALUES + th["w"],
            hvp=lambda v: v, val_gradient=None, log_prob=lambda psi=psi: SCORES @ psi["a"], psi=psi,
            weights=weights, baseline=kind)
        got = no_val(problem)
        torch.testing.assert_close(got.grad["a"], torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)
        assert got.diagnostics["train_loss_mean"] == pytest.approx(4.0)


# ------------------------------------------------------------------ variance reduction ---
K_DRAWS = 8
OFFSET = 10.0
DRAWS = 2000


def estimates(kind: str) -> torch.Tensor:
    """The estimate of d/dmu E[c + s], s ~ N(mu, 1) at mu = 0, over DRAWS seeded batches of K.

    grad_mu log q(s) = s - mu = s, so each batch's estimate is (1/K) sum_k (f_k - b_k) s_k with
    f_k = OFFSET + s_k. The true gradient is 1."""
    generator = torch.Generator().manual_seed(1234)
    mu = torch.zeros((), dtype=torch.float64, requires_grad=True)
    out = []
    for _ in range(DRAWS):
        s = torch.randn(K_DRAWS, generator=generator, dtype=torch.float64)
        log_prob = -0.5 * (s - mu) ** 2
        out.append(score_function_terms(OFFSET + s, log_prob, {"mu": mu}, baseline=kind).grad["mu"])
    return torch.stack(out)


def test_the_baseline_removes_the_variance_of_a_constant_offset() -> None:
    """Closed forms, with s ~ N(0, 1) and K draws per batch:

    none: the estimate is the mean of K iid (c + s) s, whose variance is c^2 + 2 (E s^3 = 0,
          Var s^2 = 2): Var = (c^2 + 2) / K, growing with the offset c.
    mean: (1/K) sum (s_k - s_bar) s_k is the biased sample variance of s, which c cannot reach:
          Var = 2 (K - 1) / K^2, mean (K - 1) / K.
    loo:  f_k - b_k = K / (K - 1) (f_k - f_bar) exactly, so it is the mean estimate times
          K / (K - 1): unbiased, Var = 2 / (K - 1).
    """
    k, c = K_DRAWS, OFFSET
    none, mean, loo = estimates("none"), estimates("mean"), estimates("loo")
    torch.testing.assert_close(loo, mean * k / (k - 1), rtol=1e-12, atol=1e-12)

    # The draws' variances match the closed forms to within the sampling error of DRAWS draws
    # (relative sd about sqrt((kurtosis - 1) / DRAWS) < 0.06 here; 0.2 is more than 3 sd).
    assert float(none.var()) == pytest.approx((c**2 + 2) / k, rel=0.2)
    assert float(mean.var()) == pytest.approx(2 * (k - 1) / k**2, rel=0.2)
    assert float(loo.var()) == pytest.approx(2 / (k - 1), rel=0.2)
    # ... so the baseline divides the variance by K (c^2 + 2) / (2 (K - 1)) = 58 here.
    ratio = float(none.var() / mean.var())
    assert ratio == pytest.approx(k * (c**2 + 2) / (2 * (k - 1)), rel=0.4)
    # Means: none and loo are unbiased (true gradient 1), mean is shrunk by (K - 1) / K.
    assert float(none.mean()) == pytest.approx(1.0, abs=4 * math.sqrt((c**2 + 2) / k / DRAWS))
    assert float(loo.mean()) == pytest.approx(1.0, abs=4 * math.sqrt(2 / (k - 1) / DRAWS))
    assert float(mean.mean()) == pytest.approx((k - 1) / k, abs=4 * math.sqrt(2 * (k - 1) / k**2 / DRAWS))


# ------------------------------------------ each estimator on a problem solved by hand ---
# theta in R^2 at 0; l_k(theta) = A[k] . theta + |theta|^2 / 2, so grad l_k = A[k] at theta = 0;
# H = diag(2, 1) stands for the Hessian; g_val = (1, 1). Then c_k = A[k] . v with
#   linear:            v = g_val                      = (1, 1)
#   approx-quadratic:  v = (H + lam I) g_val          = (2 + lam, 1 + lam)
#   quadratic:         v = (H + lam I)^-1 g_val       = (1 / (2 + lam), 1 / (1 + lam))
# and the hypergradient is the score-function sum over f_k = -c_k (mean baseline).
A = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], dtype=torch.float64)
H_DIAG = torch.tensor([2.0, 1.0], dtype=torch.float64)
G_VAL = torch.tensor([1.0, 1.0], dtype=torch.float64)


def quadratic_problem(with_val: bool = True) -> HypergradProblem:
    psi, _ = psi_and_log_prob()
    return HypergradProblem(
        params={"t": torch.zeros(2, dtype=torch.float64)},
        train_losses=lambda th: A @ th["t"] + 0.5 * (th["t"] ** 2).sum(),
        hvp=lambda v: {"t": H_DIAG * v["t"]},
        val_gradient=(lambda: {"t": G_VAL.clone()}) if with_val else None,
        log_prob=lambda psi=psi: SCORES @ psi["a"], psi=psi, baseline="mean")


def expected_from_direction(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    c = A @ v
    terms = (-(c - c.mean()))[:, None] * SCORES
    return terms.mean(0), terms.std(0) / math.sqrt(3)


def check_hypergrad(got, v: torch.Tensor) -> None:
    grad, stderr = expected_from_direction(v)
    torch.testing.assert_close(got.grad["a"], grad, rtol=1e-9, atol=1e-12)
    assert got.stderr is not None
    torch.testing.assert_close(got.stderr["a"], stderr, rtol=1e-9, atol=1e-12)
    c = A @ v
    assert got.diagnostics["v_norm"] == pytest.approx(float(v.norm()), rel=1e-9)
    assert got.diagnostics["c_mean"] == pytest.approx(float(c.mean()), rel=1e-9)
    assert got.diagnostics["c_std"] == pytest.approx(float(c.std()), rel=1e-9)
    assert got.diagnostics["g_val_norm"] == pytest.approx(math.sqrt(2), rel=1e-12)


@pytest.mark.parametrize("damping", [0.0, 0.5])
def test_estimators_by_hand(damping: float) -> None:
    from autosim_core.estimators import (
        ApproxQuadraticSettings,
        QuadraticSettings,
        approx_quadratic_plugin,
        linear_plugin,
        quadratic_plugin,
    )

    check_hypergrad(linear_plugin.estimate_hypergrad(problem=quadratic_problem()), G_VAL)
    got = approx_quadratic_plugin.estimate_hypergrad(problem=quadratic_problem(),
                                                     settings=ApproxQuadraticSettings(damping=damping))
    check_hypergrad(got, (H_DIAG + damping) * G_VAL)
    got = quadratic_plugin.estimate_hypergrad(problem=quadratic_problem(),
                                              settings=QuadraticSettings(damping=damping, tol=1e-10))
    check_hypergrad(got, G_VAL / (H_DIAG + damping))
    # CG on a 2 x 2 system: two steps, to a residual below the tolerance, positive curvature.
    assert got.diagnostics["cg_iterations"] == 2 and got.diagnostics["cg_residual"] < 1e-10
    assert got.diagnostics["negative_curvature"] is False


def test_quadratic_passes_its_iteration_cap_and_tolerance_to_cg() -> None:
    from autosim_core.estimators import quadratic

    one_step = quadratic(quadratic_problem(), max_iter=1)
    assert one_step.diagnostics["cg_iterations"] == 1 and one_step.diagnostics["cg_residual"] > 0.01
    loose = quadratic(quadratic_problem(), tol=0.9)
    assert loose.diagnostics["cg_iterations"] == 1


def test_estimator_function_defaults_are_the_settings_defaults() -> None:
    """quadratic() and approx_quadratic() called bare behave as the plugins with default settings."""
    import inspect

    from autosim_core.estimators import ApproxQuadraticSettings, QuadraticSettings, approx_quadratic, quadratic

    for fn, model in ((quadratic, QuadraticSettings), (approx_quadratic, ApproxQuadraticSettings)):
        defaults = {k: p.default for k, p in inspect.signature(fn).parameters.items() if k != "problem"}
        assert defaults == model().model_dump(), fn.__name__
    check_hypergrad(approx_quadratic(quadratic_problem()), H_DIAG * G_VAL)
    check_hypergrad(quadratic(quadratic_problem()), G_VAL / (H_DIAG + 0.01))


@pytest.mark.parametrize("name", ["quadratic", "approx-quadratic", "linear"])
def test_estimators_without_a_validation_set_name_themselves(name: str) -> None:
    from autosim_core import estimators

    fn = {"quadratic": estimators.quadratic, "approx-quadratic": estimators.approx_quadratic,
          "linear": estimators.linear}[name]
    with pytest.raises(ValueError) as info:
        fn(quadratic_problem(with_val=False))
    assert str(info.value) == f"the {name!r} estimator needs a validation set"


def test_no_val_reports_the_standard_error_of_its_terms() -> None:
    psi, _ = psi_and_log_prob()
    problem = HypergradProblem(
        params={"w": torch.zeros(1, dtype=torch.float64)}, train_losses=lambda th: VALUES + th["w"],
        hvp=lambda v: v, val_gradient=None, log_prob=lambda: SCORES @ psi["a"], psi=psi, baseline="mean")
    got = no_val(problem)
    hand_terms = torch.tensor([-3.0, 0.0, 3.0], dtype=torch.float64)[:, None] * SCORES
    assert got.stderr is not None
    torch.testing.assert_close(got.stderr["a"], hand_terms.std(0) / math.sqrt(3), rtol=0, atol=1e-12)


def test_one_scene_has_no_spread_of_c() -> None:
    """With K = 1 the standard deviation of c_k is reported as 0, not as torch's NaN."""
    from autosim_core.estimators import linear

    psi = {"a": torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True),
           "unused": torch.zeros(2, 2, dtype=torch.float64, requires_grad=True)}
    problem = HypergradProblem(
        params={"t": torch.zeros(2, dtype=torch.float64)}, train_losses=lambda th: A[:1] @ th["t"],
        hvp=lambda v: v, val_gradient=lambda: {"t": G_VAL.clone()},
        log_prob=lambda: SCORES[:1] @ psi["a"], psi=psi, baseline="none")
    got = linear(problem)
    assert got.diagnostics["c_std"] == 0.0 and got.diagnostics["c_mean"] == pytest.approx(1.0)
    # one term: its standard error is 0; psi that log q does not use gets zero gradient and terms
    assert got.stderr is not None and torch.equal(got.stderr["a"], torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(got.grad["a"], -1.0 * SCORES[0], rtol=0, atol=1e-12)
    assert torch.equal(got.grad["unused"], torch.zeros(2, 2, dtype=torch.float64))


def test_importance_weights_by_hand() -> None:
    from autosim_core.hypergrad import importance_weights

    log_old = torch.zeros(3, dtype=torch.float64)
    log_new = torch.log(torch.tensor([0.5, 1.0, 8.0], dtype=torch.float64))
    # ratios (0.5, 1, 8) clipped at 5 -> (0.5, 1, 5), mean 6.5 / 3
    got = importance_weights(log_new, log_old, clip=5.0)
    torch.testing.assert_close(got, torch.tensor([0.5, 1.0, 5.0], dtype=torch.float64) * 3 / 6.5, rtol=1e-12, atol=0)
