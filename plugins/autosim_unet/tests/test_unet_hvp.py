"""The core's default HVP on a tiny UNet against central differences of gradients."""

import pytest
import torch
from autosim_core.hypergrad import default_hvp, loss_gradient, tree_axpy, tree_dot, tree_norm
from torch.func import functional_call

from autosim_unet.plugin import UNetSettings, UNetTask


@pytest.mark.parametrize("freeze", [0, 3])
def test_default_hvp_matches_finite_differences(freeze):
    task = UNetTask()
    settings = UNetSettings(width=2, freeze=freeze)
    torch.manual_seed(0)
    model = task.create_model(settings=settings).double()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (2, 8, 8), generator=g)
    theta = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    fixed = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    assert len(fixed) == 4 * freeze

    def mean_loss(th):
        out = functional_call(model, {**fixed, **th}, (x,))
        return task.loss(outputs=out, targets=y, settings=settings).mean()

    v = {n: torch.randn(p.shape, generator=g, dtype=torch.float64) for n, p in theta.items()}
    hv = default_hvp(mean_loss, theta, v)
    assert set(hv) == set(theta)

    eps = 1e-6
    plus = loss_gradient(mean_loss, tree_axpy(eps, v, theta))
    minus = loss_gradient(mean_loss, tree_axpy(-eps, v, theta))
    fd = {k: (plus[k] - minus[k]) / (2 * eps) for k in theta}
    error = tree_norm({k: hv[k] - fd[k] for k in theta})
    assert error <= 1e-5 * tree_norm(fd)
    # The Hessian is symmetric: u.Hv = v.Hu for another direction u.
    u = {n: torch.randn(p.shape, generator=g, dtype=torch.float64) for n, p in theta.items()}
    assert float(tree_dot(u, hv)) == pytest.approx(float(tree_dot(v, default_hvp(mean_loss, theta, u))), rel=1e-8)
