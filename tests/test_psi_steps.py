"""The pieces of a psi step that keep q_psi alive, against brute-force answers: closed-form
KL divergences, Fisher information (natural gradient), floors, the trust region, and
quasi-random sampling."""

from __future__ import annotations

import math

import pytest
import torch

from autosim_core.searchers import AutoSimulateSettings, PsiStep, trust_region_fraction
from autosim_core.space import Bernoulli, Bounded, Categorical, Floors, LogNormal, Normal, ParameterSpace


def space() -> ParameterSpace:
    return ParameterSpace(
        light=Normal(mean=1.0, std=0.5, repeat=2),
        size=LogNormal(median=2.0, std=0.3),
        pos=Bounded(low=-1.0, high=3.0, mean=0.5, std=0.8),
        shape=Categorical(choices=["cube", "sphere", "cylinder", "cone"], probs=[0.1, 0.2, 0.3, 0.4], repeat=3),
        metal=Bernoulli(p=0.3),
    )


def perturbed(sp: ParameterSpace, seed: int, scale: float = 0.5) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: (v.detach() + scale * torch.randn(v.shape, generator=gen)).double()
            for k, v in sp.init_psi().items()}


def torch_kl(sp: ParameterSpace, p: dict[str, torch.Tensor], q: dict[str, torch.Tensor]) -> torch.Tensor:
    total = torch.zeros((), dtype=torch.float64)
    for name, fam in sp.parameters.items():
        dp, dq = fam.distribution(sp._psi_of(p, name)), fam.distribution(sp._psi_of(q, name))
        total = total + fam.repeat * torch.distributions.kl_divergence(dp, dq).sum()
    return total


@pytest.mark.parametrize("seed", range(5))
def test_kl_matches_torch_distributions(seed: int) -> None:
    sp = space()
    p, q = perturbed(sp, seed), perturbed(sp, seed + 100)
    torch.testing.assert_close(sp.kl(p, q), torch_kl(sp, p, q), rtol=1e-10, atol=1e-12)
    assert float(sp.kl(p, p)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_natural_gradient_solves_fisher_system(seed: int) -> None:
    """F from the Hessian of KL(q_psi || q_psi') in psi' at psi' = psi (an independent route)."""
    sp = space()
    psi = perturbed(sp, seed, 0.3)
    keys = list(psi)
    sizes = [psi[k].numel() for k in keys]

    def unflat(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: t.reshape(psi[k].shape) for k, t in zip(keys, torch.split(x, sizes), strict=True)}

    flat = torch.cat([psi[k].reshape(-1) for k in keys])
    fisher = torch.autograd.functional.hessian(lambda x: sp.kl(psi, unflat(x)), flat)
    gen = torch.Generator().manual_seed(seed)
    g = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in psi.items()}
    g["shape.logits"] = g["shape.logits"] - g["shape.logits"].mean()  # score gradients of logits sum to 0
    nat = sp.natural_gradient(psi, g)
    x = torch.cat([nat[k].reshape(-1) for k in keys])
    torch.testing.assert_close(fisher @ x, torch.cat([g[k].reshape(-1) for k in keys]), rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(x, torch.linalg.pinv(fisher) @ (fisher @ x), rtol=1e-7, atol=1e-9)


def test_floors_hold_and_are_minimal() -> None:
    cat = Categorical(choices=list("abcde"))
    floors = Floors(min_prob_ratio=0.2, min_entropy_ratio=0.6)
    for seed in range(20):
        gen = torch.Generator().manual_seed(seed)
        psi = {"logits": 6 * torch.randn(5, generator=gen, dtype=torch.float64)}
        before = torch.softmax(psi["logits"].clone(), -1)
        cat.floor_(psi, floors)
        p = torch.softmax(psi["logits"], -1)
        entropy = float(-(p * p.log()).sum())
        assert float(p.min()) >= 0.2 / 5 - 1e-9
        assert entropy >= 0.6 * math.log(5) - 1e-9
        # the result is a mixture with the uniform, and no smaller mixture would do
        alpha = float((p[0] - before[0]) / (0.2 - before[0]))
        torch.testing.assert_close(p, (1 - alpha) * before + alpha / 5)
        if alpha > 1e-6:
            less = (1 - 0.99 * alpha) * before + 0.99 * alpha / 5
            violated = float(less.min()) < 0.2 / 5 or float(-(less * less.log()).sum()) < 0.6 * math.log(5)
            assert violated


def test_floors_leave_a_healthy_distribution_alone() -> None:
    sp = space()
    psi = {k: v.detach() for k, v in sp.init_psi().items()}
    before = {k: v.clone() for k, v in psi.items()}
    sp.apply_floors_(psi, Floors(min_prob_ratio=0.2, min_entropy_ratio=0.5, min_std_ratio=0.5))
    for k in psi:
        torch.testing.assert_close(psi[k], before[k])


def test_bernoulli_and_std_floors() -> None:
    sp = space()
    psi = {k: v.detach().clone() for k, v in sp.init_psi().items()}
    psi["metal.logit"].fill_(-9.0)
    psi["light.log_std"].fill_(math.log(0.01))
    psi["size.log_std"].fill_(math.log(0.2))
    sp.apply_floors_(psi, Floors(min_prob_ratio=0.1, min_std_ratio=0.5))
    assert float(psi["metal.logit"].sigmoid()) == pytest.approx(0.05, rel=1e-5)
    assert float(psi["light.log_std"].exp()) == pytest.approx(0.25, rel=1e-5)
    assert float(psi["size.log_std"].exp()) == pytest.approx(0.2, rel=1e-5)  # above 0.5 * 0.3: untouched


@pytest.mark.parametrize("max_kl", [1e-3, 0.01, 0.1])
def test_trust_region_step_never_exceeds_its_bound(max_kl: float) -> None:
    sp = space()
    floors = Floors(min_prob_ratio=0.1, min_std_ratio=0.2)
    shrunk = 0
    for seed in range(30):
        old = perturbed(sp, seed, 0.3)
        sp.apply_floors_(old, floors)
        new = perturbed(sp, seed + 1000, 1.5)
        sp.apply_floors_(new, floors)
        a = trust_region_fraction(sp, old, new, max_kl, floors)
        cand = {k: old[k] + a * (new[k] - old[k]) for k in old}
        assert float(sp.kl(old, cand)) <= max_kl * (1 + 1e-9)
        shrunk += a < 1
    assert shrunk > 20


def test_psi_step_respects_trust_region_and_floors_under_huge_gradients() -> None:
    sp = space()
    psi = sp.init_psi()
    settings = AutoSimulateSettings(optimizer="sgd", lr=10.0, natural_gradient=True, max_kl=0.05,
                                    min_prob_ratio=0.2, min_std_ratio=0.3)
    step = PsiStep(sp, psi, settings)
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        old = {k: v.detach().clone() for k, v in psi.items()}
        grad = {k: 5 * torch.randn(v.shape, generator=gen) for k, v in psi.items()}
        info = step(grad)
        assert info["kl"] <= 0.05 * (1 + 1e-6)
        assert float(sp.kl(old, {k: v.detach() for k, v in psi.items()})) <= 0.05 * (1 + 1e-5)
        p = torch.softmax(psi["shape.logits"].detach(), -1)
        assert float(p.min()) >= 0.2 / 4 - 1e-6
        assert float(psi["light.log_std"].exp()) >= 0.3 * 0.5 - 1e-6


def test_sobol_sampling_is_reproducible_and_stratified() -> None:
    sp = space()
    psi = sp.init_psi()
    a = sp.sample_quasi(psi, 1024, torch.Generator().manual_seed(3))
    b = sp.sample_quasi(psi, 1024, torch.Generator().manual_seed(3))
    c = sp.sample_quasi(psi, 1024, torch.Generator().manual_seed(4))
    for name in a:
        torch.testing.assert_close(a[name], b[name])
    assert not torch.equal(a["light"], c["light"])
    assert a["light"].shape == (1024, 2) and a["shape"].shape == (1024, 3)
    # every 1-D projection of 2^m scrambled Sobol points has one point per 1/2^m interval
    counts = torch.bincount(a["shape"][:, 0], minlength=4).double()
    assert torch.all((counts - 1024 * torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)).abs() <= 1.0)
    u = torch.distributions.Normal(1.0, 0.5).cdf(a["light"][:, 1].double())
    assert torch.equal(torch.sort((u * 1024).floor().long()).values, torch.arange(1024))
    assert abs(float(a["metal"].mean()) - 0.3) <= 1 / 1024
    lp = sp.log_prob(psi, a)
    assert lp.shape == (1024,) and torch.isfinite(lp).all()
