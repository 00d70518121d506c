"""Both HVP modes against a dense Hessian; c_k by one jvp against per-sample backward passes,
and by a central difference against the jvp."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from autosim_core.hypergrad import (
    CK_METHODS,
    DEFAULT_CK_METHOD,
    DEFAULT_HVP_MODE,
    HVP_MODES,
    central_difference_step,
    default_hvp,
    directional_derivatives,
    directional_derivatives_fd,
    directional_derivatives_jvp,
    hvp_operator,
    loss_gradient,
)


def small_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()


def data(seed: int = 1, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=gen, dtype=torch.float64), torch.randint(0, 2, (n,), generator=gen)


def per_sample_losses(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
    def f(params: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(functional_call(model, params, (x,)), y, reduction="none")
    return f


def flat(tree: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    return torch.cat([tree[k].reshape(-1) for k in names])


def unflat(vec: torch.Tensor, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, i = {}, 0
    for k, t in like.items():
        out[k] = vec[i:i + t.numel()].reshape(t.shape)
        i += t.numel()
    return out


@pytest.mark.parametrize("mode", list(HVP_MODES))
@pytest.mark.parametrize("seed", [0, 1])
def test_hvp_modes_match_dense_hessian(seed: int, mode: str) -> None:
    model = small_model(seed)
    x, y = data(seed + 10)
    params = {k: p.detach().clone() for k, p in model.named_parameters()}
    names = list(params)
    loss = per_sample_losses(model, x, y)

    def mean_loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return loss(p).mean()

    theta = flat(params, names)
    hessian = torch.autograd.functional.hessian(lambda v: mean_loss(unflat(v, params)), theta)
    assert hessian.shape == (theta.numel(), theta.numel())
    gen = torch.Generator().manual_seed(seed + 20)
    for _ in range(3):
        vec = torch.randn(theta.numel(), generator=gen, dtype=torch.float64)
        hv = default_hvp(mean_loss, params, unflat(vec, params), mode=mode)
        assert set(hv) == set(params)
        assert all(hv[k].shape == params[k].shape for k in params)
        torch.testing.assert_close(flat(hv, names), hessian @ vec, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("mode", list(HVP_MODES))
def test_hvp_ignores_autograd_state_of_inputs(mode: str) -> None:
    """Params that require grad (as a model's do) give the same H v and nothing leaks into .grad."""
    model = small_model(3)
    x, y = data(4)
    loss = per_sample_losses(model, x, y)
    live = dict(model.named_parameters())
    detached = {k: p.detach().clone() for k, p in live.items()}
    vec = {k: torch.ones_like(p) for k, p in detached.items()}
    a = default_hvp(lambda p: loss(p).mean(), live, vec, mode=mode)
    b = default_hvp(lambda p: loss(p).mean(), detached, vec, mode=mode)
    for k in a:
        torch.testing.assert_close(a[k], b[k])
        assert not a[k].requires_grad
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("mode", list(HVP_MODES))
def test_hvp_operator_matches_dense_hessian_over_several_products(mode: str) -> None:
    """The reverse-over-reverse operator reuses one gradient graph for every product."""
    model = small_model(2)
    x, y = data(21)
    params = {k: p.detach().clone() for k, p in model.named_parameters()}
    names = list(params)
    loss = per_sample_losses(model, x, y)
    calls = []

    def mean_loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        calls.append(1)
        return loss(p).mean()

    theta = flat(params, names)
    hessian = torch.autograd.functional.hessian(lambda v: loss(unflat(v, params)).mean(), theta)
    operator = hvp_operator(mean_loss, params, mode=mode)
    gen = torch.Generator().manual_seed(22)
    for _ in range(4):
        vec = torch.randn(theta.numel(), generator=gen, dtype=torch.float64)
        hv = operator(unflat(vec, params))
        assert not any(h.requires_grad for h in hv.values())
        torch.testing.assert_close(flat(hv, names), hessian @ vec, rtol=1e-9, atol=1e-11)
    if mode == "reverse-over-reverse":
        assert len(calls) == 1


def test_reverse_over_reverse_gives_zero_for_parameters_the_loss_ignores() -> None:
    params = {"w": torch.tensor([1.0, 2.0], dtype=torch.float64), "unused": torch.ones(3, dtype=torch.float64)}
    vec = {"w": torch.tensor([1.0, -1.0], dtype=torch.float64), "unused": torch.ones(3, dtype=torch.float64)}
    hv = default_hvp(lambda p: (p["w"] ** 3).sum(), params, vec, mode="reverse-over-reverse")
    torch.testing.assert_close(hv["w"], torch.tensor([6.0, -12.0], dtype=torch.float64))
    torch.testing.assert_close(hv["unused"], torch.zeros(3, dtype=torch.float64))


def test_unknown_modes_are_refused() -> None:
    assert DEFAULT_HVP_MODE in HVP_MODES and DEFAULT_CK_METHOD in CK_METHODS
    with pytest.raises(ValueError) as info:
        default_hvp(lambda p: p["w"].sum(), {"w": torch.ones(1)}, {"w": torch.ones(1)}, mode="dense")
    assert str(info.value) == "unknown HVP mode 'dense'; allowed: forward-over-reverse, reverse-over-reverse"
    with pytest.raises(ValueError) as info:
        directional_derivatives(lambda p: p["w"], {"w": torch.ones(1)}, {"w": torch.ones(1)}, method="exact")
    assert str(info.value) == "unknown c_k method 'exact'; allowed: jvp, central-difference"


def test_directional_derivatives_match_per_sample_backward() -> None:
    model = small_model(5)
    x, y = data(6, n=24)
    params = {k: p.detach().clone() for k, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(7)
    direction = {k: torch.randn(p.shape, generator=gen, dtype=torch.float64) for k, p in params.items()}
    c = directional_derivatives_jvp(per_sample_losses(model, x, y), params, direction)
    assert c.shape == (24,)
    assert not c.requires_grad

    expected = []
    for k in range(len(x)):
        model.zero_grad(set_to_none=True)
        out = model(x[k:k + 1])
        torch.nn.functional.cross_entropy(out, y[k:k + 1]).backward()
        expected.append(sum((p.grad * direction[n]).sum() for n, p in model.named_parameters()))
    torch.testing.assert_close(c, torch.stack(expected), rtol=1e-10, atol=1e-12)


def test_loss_gradient_matches_backward() -> None:
    model = small_model(8)
    x, y = data(9)
    params = {k: p.detach().clone() for k, p in model.named_parameters()}
    g = loss_gradient(lambda p: per_sample_losses(model, x, y)(p).mean(), params)
    model.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(g[n], p.grad)


def test_central_difference_matches_jvp_in_float64() -> None:
    """At a move of sqrt(eps) the truncation error is O(eps) and the rounding error O(sqrt(eps))."""
    model = small_model(11)
    x, y = data(12, n=32)
    params = {k: p.detach().clone() for k, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(13)
    direction = {k: torch.randn(p.shape, generator=gen, dtype=torch.float64) for k, p in params.items()}
    f = per_sample_losses(model, x, y)
    exact = directional_derivatives_jvp(f, params, direction)
    fd = directional_derivatives_fd(f, params, direction)
    assert fd.shape == exact.shape and not fd.requires_grad
    assert float((fd - exact).abs().max()) <= 1e-6 * float(exact.abs().max())
    torch.testing.assert_close(directional_derivatives(f, params, direction, method="central-difference"), fd)


def test_central_difference_matches_jvp_in_float32() -> None:
    """The accuracy the docstring states for float32: a few 1e-3 of max |c_k|."""
    model = small_model(14).float()
    x, y = data(15, n=32)
    x = x.float()
    params = {k: p.detach().clone() for k, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(16)
    direction = {k: torch.randn(p.shape, generator=gen) for k, p in params.items()}
    f = per_sample_losses(model, x, y)
    exact = directional_derivatives_jvp(f, params, direction)
    fd = directional_derivatives_fd(f, params, direction)
    assert float((fd - exact).abs().max()) <= 1e-2 * float(exact.abs().max())


def test_central_difference_step_scales_with_direction_and_dtype() -> None:
    params = {"w": torch.zeros(4, dtype=torch.float64)}
    v = {"w": torch.ones(4, dtype=torch.float64)}
    h = central_difference_step(params, v)
    assert h == pytest.approx(torch.finfo(torch.float64).eps ** 0.5 / 2)
    assert central_difference_step(params, {"w": 2 * v["w"]}) == pytest.approx(h / 2)
    assert central_difference_step({"w": params["w"].float()}, {"w": v["w"].float()}) > 10000 * h
    assert central_difference_step({"w": params["w"].float()}, {"w": v["w"].float()}) == pytest.approx(
        torch.finfo(torch.float32).eps ** 0.5 / 2)
    assert central_difference_step(params, {"w": torch.zeros(4, dtype=torch.float64)}) == 0.0
    zero = directional_derivatives_fd(lambda p: p["w"] * 3, params, {"w": torch.zeros(4, dtype=torch.float64)})
    torch.testing.assert_close(zero, torch.zeros(4, dtype=torch.float64))


def test_central_difference_uses_the_step_it_is_given() -> None:
    """For l(t) = t^3 the central difference along v = 1 is 3 t^2 + h^2 exactly: the step shows."""
    params = {"t": torch.tensor([0.5, 2.0], dtype=torch.float64)}
    v = {"t": torch.ones(2, dtype=torch.float64)}
    got = directional_derivatives_fd(lambda p: p["t"] ** 3, params, v, step=0.1)
    torch.testing.assert_close(got, 3 * params["t"] ** 2 + 0.01, rtol=0, atol=1e-12)
