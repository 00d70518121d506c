"""Per-image cross-entropy: its mean is the batch loss, and torch.func can differentiate it."""

import pytest
import torch
import torch.nn.functional as F
from autosim_core.hypergrad import directional_derivatives
from torch.func import functional_call

from autosim_unet.metrics import per_image_cross_entropy
from autosim_unet.plugin import UNetTask


def batch(n=3, classes=4, side=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, side, side, generator=g, dtype=torch.float64)
    targets = torch.randint(0, classes, (n, side, side), generator=g)
    return logits, targets


def test_shape_and_mean_equals_batch_loss():
    logits, targets = batch()
    losses = UNetTask().loss(outputs=logits, targets=targets, settings={})
    assert losses.shape == (3,)
    assert float(losses.mean()) == pytest.approx(float(F.cross_entropy(logits, targets)), rel=1e-12)


def test_each_entry_is_that_image_alone():
    logits, targets = batch()
    targets[1, :2] = 255
    targets[2] = 255  # an image with nothing labelled
    losses = per_image_cross_entropy(logits, targets, ignore_index=255)
    for i in range(2):
        alone = F.cross_entropy(logits[i:i + 1], targets[i:i + 1], ignore_index=255)
        assert float(losses[i]) == pytest.approx(float(alone), rel=1e-12)
    assert float(losses[2]) == 0.0


def test_class_weights_match_torch_weighted_mean_per_image():
    logits, targets = batch()
    w = torch.tensor([0.2, 1.0, 2.0, 3.0], dtype=torch.float64)
    losses = per_image_cross_entropy(logits, targets, class_weights=w)
    for i in range(3):
        alone = F.cross_entropy(logits[i:i + 1], targets[i:i + 1], weight=w)
        assert float(losses[i]) == pytest.approx(float(alone), rel=1e-12)


def test_jvp_of_per_sample_losses_equals_per_sample_gradients():
    """c_k = grad l_k . v by the core's single jvp, against K separate backward passes."""
    task = UNetTask()
    settings = task.task_settings_model().model_validate({"width": 2, "freeze": 2})
    torch.manual_seed(0)
    model = task.create_model(settings=settings).double()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (3, 8, 8), generator=g)
    theta = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    fixed = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    v = {n: torch.randn(p.shape, generator=g, dtype=torch.float64) for n, p in theta.items()}

    def per_sample(th):
        return task.loss(outputs=functional_call(model, {**fixed, **th}, (x,)), targets=y, settings=settings)

    c = directional_derivatives(per_sample, theta, v)
    for k in range(3):
        model.zero_grad()
        task.loss(outputs=model(x[k:k + 1]), targets=y[k:k + 1], settings=settings).sum().backward()
        expected = sum((p.grad * v[n]).sum() for n, p in model.named_parameters() if p.requires_grad)
        assert float(c[k]) == pytest.approx(float(expected), rel=1e-8, abs=1e-12)
