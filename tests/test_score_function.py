"""score_function_gradient through the families of space.py against analytic gradients of
expectations, with tolerances from the Monte Carlo standard error; and sample/log_prob
consistency of every family against torch.distributions."""

from __future__ import annotations

import math

import pytest
import torch

from autosim_core.hypergrad import score_function_gradient
from autosim_core.space import Bernoulli, Bounded, Categorical, LogNormal, Normal, ParameterSpace

K = 200_000
Z = 4.5  # standard errors allowed; the generators are seeded, so this never flakes


def check_mc(estimate: torch.Tensor, exact: torch.Tensor, per_sample: torch.Tensor) -> None:
    """|estimate - exact| within Z standard errors of the mean of ``per_sample`` (shape (K, ...))."""
    se = per_sample.double().std(dim=0) / math.sqrt(per_sample.shape[0])
    err = (estimate.double() - exact.double()).abs()
    assert torch.all(err <= Z * se + 1e-9), f"estimate {estimate} exact {exact} se {se}"
    # the check has power: the standard error is small compared with the gradient itself
    assert torch.all(se < 0.05 * exact.double().abs().clamp(min=0.1))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -------------------------------------------------------------------------- normal ---
@pytest.mark.parametrize("mu,sigma", [(0.7, 1.3), (-2.0, 0.4)])
def test_normal_second_moment_gradient(mu: float, sigma: float) -> None:
    """d/d(mean, log_std) of E_{s~N(mu, sigma)}[s^2] = mu^2 + sigma^2 is (2 mu, 2 sigma^2)."""
    space = ParameterSpace(s=Normal(mean=mu, std=sigma))
    psi = space.init_psi()
    latents = space.sample(psi, K, gen(1))
    assert latents["s"].shape == (K, 1)
    s = latents["s"][:, 0].double()
    f = s**2
    g = score_function_gradient(f, space.log_prob(psi, latents), psi)
    assert set(g) == {"s.loc", "s.log_std"}

    centred = (f - f.mean())
    per_sample = torch.stack([centred * (s - mu) / sigma**2, centred * ((s - mu) ** 2 / sigma**2 - 1)], dim=1)
    estimate = torch.stack([g["s.loc"], g["s.log_std"]])
    check_mc(estimate, torch.tensor([2 * mu, 2 * sigma**2]), per_sample)


def test_normal_without_baseline_is_unbiased_too() -> None:
    space = ParameterSpace(s=Normal(mean=1.0, std=0.5))
    psi = space.init_psi()
    latents = space.sample(psi, K, gen(2))
    s = latents["s"][:, 0].double()
    f = s**2
    g = score_function_gradient(f, space.log_prob(psi, latents), psi, baseline=False)
    per_sample = torch.stack([f * (s - 1.0) / 0.25, f * ((s - 1.0) ** 2 / 0.25 - 1)], dim=1)
    check_mc(torch.stack([g["s.loc"], g["s.log_std"]]), torch.tensor([2.0, 2 * 0.25]), per_sample)


def test_normal_with_repeats_sums_log_probs() -> None:
    """repeat=3: a scene holds 3 iid draws; E[sum s_r^2] = 3 (mu^2 + sigma^2)."""
    mu, sigma = 0.5, 0.8
    space = ParameterSpace(s=Normal(mean=mu, std=sigma, repeat=3))
    psi = space.init_psi()
    latents = space.sample(psi, K, gen(3))
    assert latents["s"].shape == (K, 3)
    s = latents["s"].double()
    f = (s**2).sum(dim=1)
    lp = space.log_prob(psi, latents)
    assert lp.shape == (K,)
    g = score_function_gradient(f, lp, psi)
    centred = f - f.mean()
    per_sample = torch.stack([centred * ((s - mu) / sigma**2).sum(1),
                              centred * ((s - mu) ** 2 / sigma**2 - 1).sum(1)], dim=1)
    check_mc(torch.stack([g["s.loc"], g["s.log_std"]]), torch.tensor([6 * mu, 6 * sigma**2]), per_sample)


def test_normal_sample_moments_and_log_prob() -> None:
    fam = Normal(mean=1.5, std=0.3)
    psi = {k: v.requires_grad_() for k, v in fam.psi_init().items()}
    lat = fam.sample(psi, K, gen(4))
    x = lat[:, 0].double()
    assert abs(float(x.mean()) - 1.5) < Z * 0.3 / math.sqrt(K)
    assert abs(float(x.std()) - 0.3) < Z * 0.3 / math.sqrt(2 * K)
    expected = torch.distributions.Normal(torch.tensor(1.5), torch.tensor(0.3)).log_prob(lat[:, 0])
    torch.testing.assert_close(fam.log_prob(psi, lat), expected)


# --------------------------------------------------------------------- categorical ---
def test_categorical_expectation_gradient() -> None:
    probs = [0.1, 0.2, 0.3, 0.4]
    fvals = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    space = ParameterSpace(c=Categorical(choices=["a", "b", "c", "d"], probs=probs))
    psi = space.init_psi()
    torch.testing.assert_close(torch.softmax(psi["c.logits"], -1), torch.tensor(probs))
    latents = space.sample(psi, K, gen(5))
    idx = latents["c"][:, 0]
    f = fvals[idx]
    g = score_function_gradient(f, space.log_prob(psi, latents), psi)

    logits = psi["c.logits"].detach().double().requires_grad_()
    (exact,) = torch.autograd.grad((torch.softmax(logits, -1) * fvals).sum(), logits)
    p = torch.softmax(logits.detach(), -1)
    per_sample = (f - f.mean())[:, None] * (torch.nn.functional.one_hot(idx, 4).double() - p)
    check_mc(g["c.logits"], exact, per_sample)
    # frequencies follow the probabilities
    freq = torch.bincount(idx, minlength=4).double() / K
    assert torch.all((freq - p).abs() < Z * torch.sqrt(p * (1 - p) / K))


def test_categorical_with_54_logits_samples_and_scores() -> None:
    """The detection experiment's single categorical over 54 combinations."""
    fam = Categorical(choices=list(range(54)))
    psi = {k: v.requires_grad_() for k, v in fam.psi_init().items()}
    assert psi["logits"].shape == (54,)
    lat = fam.sample(psi, 1000, gen(6))
    assert lat.shape == (1000, 1) and int(lat.min()) >= 0 and int(lat.max()) < 54
    torch.testing.assert_close(fam.log_prob(psi, lat), torch.full((1000,), -math.log(54)))


# ----------------------------------------------------------------------- bernoulli ---
def test_bernoulli_expectation_gradient() -> None:
    p, f1, f0 = 0.3, 2.0, -1.0
    space = ParameterSpace(b=Bernoulli(p=p))
    psi = space.init_psi()
    latents = space.sample(psi, K, gen(7))
    b = latents["b"][:, 0].double()
    f = torch.where(b > 0.5, f1, f0)
    g = score_function_gradient(f, space.log_prob(psi, latents), psi)
    exact = torch.tensor([p * (1 - p) * (f1 - f0)])
    per_sample = ((f - f.mean()) * (b - p))[:, None]
    check_mc(g["b.logit"].reshape(1), exact, per_sample)
    assert abs(float(b.mean()) - p) < Z * math.sqrt(p * (1 - p) / K)
    records = space.records({"b": latents["b"][:10]})
    assert [r["b"] for r in records] == [bool(v > 0.5) for v in latents["b"][:10, 0]]
    assert all(isinstance(r["b"], bool) for r in records)


# ----------------------------------------------------------------- a joint space ---
def test_joint_space_gradients_and_frozen_parameters() -> None:
    """Several parameters at once: each coordinate sees its own term; learn=False gets none."""
    mu, sigma, p = 0.3, 0.6, 0.7
    fvals = torch.tensor([0.0, 1.0, 4.0], dtype=torch.float64)
    space = ParameterSpace(
        n=Normal(mean=mu, std=sigma),
        c=Categorical(choices=["x", "y", "z"]),
        b=Bernoulli(p=p),
        frozen=Normal(mean=5.0, std=1.0, learn=False),
    )
    psi = space.init_psi()
    assert not psi["frozen.loc"].requires_grad and psi["n.loc"].requires_grad
    assert set(space.learnable(psi)) == {"n.loc", "n.log_std", "c.logits", "b.logit"}
    latents = space.sample(psi, K, gen(8))
    s = latents["n"][:, 0].double()
    idx = latents["c"][:, 0]
    b = latents["b"][:, 0].double()
    f = s**2 + fvals[idx] + 3.0 * b + latents["frozen"][:, 0].double()
    g = score_function_gradient(f, space.log_prob(psi, latents), psi)
    assert set(g) == {"n.loc", "n.log_std", "c.logits", "b.logit"}

    centred = (f - f.mean())[:, None]
    third = torch.full((3,), 1 / 3, dtype=torch.float64)
    per_sample = torch.cat([
        centred * ((s - mu) / sigma**2)[:, None],
        centred * ((s - mu) ** 2 / sigma**2 - 1)[:, None],
        centred * (torch.nn.functional.one_hot(idx, 3).double() - third),
        centred * (b - p)[:, None],
    ], dim=1)
    estimate = torch.cat([g["n.loc"].reshape(1), g["n.log_std"].reshape(1), g["c.logits"], g["b.logit"].reshape(1)])
    cat_exact = third * (fvals - (third * fvals).sum())
    exact = torch.cat([torch.tensor([2 * mu, 2 * sigma**2], dtype=torch.float64), cat_exact,
                       torch.tensor([3.0 * p * (1 - p)], dtype=torch.float64)])
    se = per_sample.std(0) / math.sqrt(K)
    assert torch.all((estimate.double() - exact).abs() <= Z * se), (estimate, exact, se)


# ---------------------------------------------------------------------- log-normal ---
def test_lognormal_sample_log_prob_and_gradient() -> None:
    median, sigma = 2.0, 0.4
    space = ParameterSpace(light=LogNormal(median=median, std=sigma))
    psi = space.init_psi()
    assert float(psi["light.loc"].detach()) == pytest.approx(math.log(median))
    latents = space.sample(psi, K, gen(9))
    u = latents["light"][:, 0]
    values = u.double().exp()
    records = space.records({"light": latents["light"][:200]})
    torch.testing.assert_close(torch.tensor([r["light"] for r in records], dtype=torch.float64), values[:200])
    # the renderer's values are log-normal around the median
    assert abs(float(values.log().mean()) - math.log(median)) < Z * sigma / math.sqrt(K)
    assert abs(float(values.median()) - median) < 0.01 * median
    # log q of the latent = log-normal density of the value + log(value) (a Jacobian free of psi)
    lp = space.log_prob(psi, latents)
    ref = torch.distributions.LogNormal(psi["light.loc"].detach(), sigma).log_prob(values.float())
    torch.testing.assert_close(lp.detach(), ref + values.float().log(), rtol=1e-5, atol=1e-5)
    # d/d(loc, log_std) of E[s] = exp(loc + sigma^2/2) is (E[s], sigma^2 E[s])
    g = score_function_gradient(values, lp, psi)
    mean = math.exp(math.log(median) + sigma**2 / 2)
    centred = values - values.mean()
    per_sample = torch.stack([centred * (u.double() - math.log(median)) / sigma**2,
                              centred * ((u.double() - math.log(median)) ** 2 / sigma**2 - 1)], dim=1)
    check_mc(torch.stack([g["light.loc"], g["light.log_std"]]), torch.tensor([mean, sigma**2 * mean]), per_sample)


def test_lognormal_values_clipped_and_rounded() -> None:
    fam = LogNormal(median=3.0, std=1.0, low=1.0, high=6.0, integer=True)
    lat = fam.sample(fam.psi_init(), 2000, gen(10))
    vals = fam.values(lat)
    assert all(isinstance(v, int) and 1 <= v <= 6 for v in vals)
    assert {1, 6} <= set(vals)


# ------------------------------------------------------------------------- bounded ---
def bounded_expectation(low: float, high: float, loc: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """E[low + (high - low) sigmoid(u)], u ~ N(loc, exp(log_std)), by quadrature (differentiable)."""
    z = torch.linspace(-12.0, 12.0, 48001, dtype=torch.float64)
    u = loc + log_std.exp() * z
    density = torch.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    return torch.trapezoid((low + (high - low) * torch.sigmoid(u)) * density, z)


def test_bounded_sample_log_prob_and_gradient() -> None:
    low, high, centre, sigma = -1.0, 3.0, 2.0, 0.8
    space = ParameterSpace(pos=Bounded(low=low, high=high, mean=centre, std=sigma))
    psi = space.init_psi()
    assert space.describe(psi)["pos"]["mean"] == pytest.approx(centre)
    latents = space.sample(psi, K, gen(11))
    u = latents["pos"][:, 0]
    values = low + (high - low) * torch.sigmoid(u.double())
    records = space.records({"pos": latents["pos"][:200]})
    torch.testing.assert_close(torch.tensor([r["pos"] for r in records], dtype=torch.float64), values[:200])
    assert float(values.min()) > low and float(values.max()) < high
    # the renderer's value at the latent's median is ``mean``
    assert abs(float(values.median()) - centre) < 0.01 * (high - low)
    # log q(u) = density of the value under the pushed-forward distribution + log |ds/du|
    lp = space.log_prob(psi, latents)
    loc = psi["pos.loc"].detach().double()
    pushed = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(loc, torch.tensor(sigma, dtype=torch.float64)),
        [torch.distributions.transforms.SigmoidTransform(),
         torch.distributions.transforms.AffineTransform(low, high - low)])
    ud = u.double()
    log_jac = math.log(high - low) + torch.nn.functional.logsigmoid(ud) + torch.nn.functional.logsigmoid(-ud)
    keep = (values > low + 1e-6) & (values < high - 1e-6)
    torch.testing.assert_close(lp.detach().double()[keep], (pushed.log_prob(values) + log_jac)[keep],
                               rtol=1e-4, atol=1e-4)
    # gradient of E[s] against quadrature
    g = score_function_gradient(values, lp, psi)
    loc_q = loc.clone().requires_grad_()
    log_std_q = torch.tensor(math.log(sigma), dtype=torch.float64, requires_grad=True)
    exact = torch.stack(torch.autograd.grad(bounded_expectation(low, high, loc_q, log_std_q), [loc_q, log_std_q]))
    centred = values - values.mean()
    per_sample = torch.stack([centred * (ud - loc) / sigma**2, centred * ((ud - loc) ** 2 / sigma**2 - 1)], dim=1)
    check_mc(torch.stack([g["pos.loc"], g["pos.log_std"]]), exact, per_sample)


def test_score_function_gives_zero_for_unused_psi() -> None:
    space = ParameterSpace(a=Normal(mean=0.0), b=Normal(mean=1.0))
    psi = space.init_psi()
    latents = space.sample(psi, 100, gen(12))
    lp = space["a"].log_prob({"loc": psi["a.loc"], "log_std": psi["a.log_std"]}, latents["a"])
    g = score_function_gradient(latents["a"][:, 0], lp, psi)
    assert torch.equal(g["b.loc"], torch.zeros(())) and torch.equal(g["b.log_std"], torch.zeros(()))
    # d/dloc log N(x; loc, sigma) = (x - loc) / sigma^2, centred by the batch mean of f = x
    x, loc, sigma = latents["a"][:, 0].double(), float(psi["a.loc"]), math.exp(float(psi["a.log_std"]))
    expected = ((x - x.mean()) * (x - loc) / sigma**2).mean()
    assert float(g["a.loc"]) == pytest.approx(float(expected), rel=1e-5)
    assert float(expected) == pytest.approx(1.0, abs=0.3)  # E[(x - x_bar) x] = Var x = 1
