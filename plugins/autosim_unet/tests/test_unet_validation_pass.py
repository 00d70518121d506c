"""The run's fused validation pass on the unet task against separate passes; its reuse by
validation_row; the run's HVP operator and a task's own hvp hook; c_k by central difference
against the jvp on a small UNet."""

import pytest
import torch
from autosim_core.hookspecs import hookimpl
from autosim_core.hypergrad import (
    default_hvp,
    directional_derivatives_fd,
    directional_derivatives_jvp,
    loss_gradient,
)
from unet_helpers import make_run, registry

from autosim_unet.plugin import UNetSettings, UNetTask


def prepared_run(tmp_path, **kwargs):
    run = make_run(tmp_path, "linear", **kwargs)
    run.val = run.load_data("validation")
    run.model = run.create_model()
    run.model_optimizer = run.create_model_optimizer(run.model)
    return run


class CountForwards:
    def __init__(self, model):
        self.calls = 0
        model.register_forward_hook(self)

    def __call__(self, *args):
        self.calls += 1


@pytest.mark.parametrize("freeze", [0, 3])
def test_fused_pass_equals_evaluation_and_separate_gradient(tmp_path, freeze):
    run = prepared_run(tmp_path, task={"freeze": freeze})
    model = run.model
    fused = run.validation_pass(model)

    loss, metrics = run.evaluate(model, run.val)
    assert fused.loss == pytest.approx(loss, rel=1e-6)
    assert fused.metrics == pytest.approx(metrics, rel=1e-6)

    theta = run.theta(model)
    expected = {k: torch.zeros_like(v) for k, v in theta.items()}
    for chunk in run.val.chunks(run.config.training.eval_batch_size):
        per_sample = run.functional_losses(model, chunk)
        g = loss_gradient(lambda th, f=per_sample: f(th).sum() / len(run.val), theta)
        for k in expected:
            expected[k] += g[k]
    assert set(fused.gradient) == set(theta)
    for k in theta:
        torch.testing.assert_close(fused.gradient[k], expected[k], rtol=1e-4, atol=1e-6)
    assert run.seconds["eval"] > 0


def test_validation_row_reuses_the_pass_until_the_model_trains(tmp_path):
    run = prepared_run(tmp_path)
    model = run.model
    forwards = CountForwards(model)
    g = run.val_gradient(model)
    after_pass = forwards.calls
    assert after_pass == 1  # four validation images, one chunk

    row = run.validation_row(model)
    assert forwards.calls == after_pass
    fused = run.validation_pass(model)
    assert row["val_loss"] == fused.loss and row["val_metric"] == fused.metrics["metric"]
    assert run.val_gradient(model) is g

    _, batch = run.render_training(run.space.init_psi(), 4)
    run.fine_tune(model, run.model_optimizer, batch)
    forwards.calls = 0
    row = run.validation_row(model)
    assert forwards.calls == 1  # trained since the pass: scored afresh
    loss, _ = run.evaluate(model, run.val)
    assert row["val_loss"] == pytest.approx(loss)

    run.validation_pass(model)
    with torch.no_grad():
        next(model.parameters()).mul_(0.5)  # changed outside training: no stale scores either
    forwards.calls = 0
    run.validation_row(model)
    assert forwards.calls == 1


def test_central_difference_c_k_on_a_small_unet():
    task = UNetTask()
    settings = UNetSettings(width=4, depth=1)
    torch.manual_seed(0)
    model = task.create_model(settings=settings).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(8, 3, 16, 16, generator=g)
    y = torch.randint(0, 4, (8, 16, 16), generator=g)
    theta = {n: p.detach() for n, p in model.named_parameters()}

    def per_sample(th):
        out = torch.func.functional_call(model, th, (x,))
        return task.loss(outputs=out, targets=y, settings=settings)

    v = loss_gradient(lambda th: per_sample(th).mean(), theta)
    exact = directional_derivatives_jvp(per_sample, theta, v)
    fd = directional_derivatives_fd(per_sample, theta, v)
    # float32, ReLU kinks included: the bound the docstring states, a few 1e-3 of max |c_k|
    # and a few % of their spread.
    error = float((fd - exact).abs().max())
    assert error <= 1e-2 * float(exact.abs().max())
    assert error <= 0.1 * float(exact.std())


class TaskWithHvp(UNetTask):
    def __init__(self):
        self.calls = 0

    @hookimpl
    def hvp(self, loss_fn, params, vector):
        self.calls += 1
        return {k: 2 * v for k, v in vector.items()}


def test_run_hvp_operator_uses_the_core_or_the_tasks_hook(tmp_path):
    run = prepared_run(tmp_path)
    _, batch = run.render_training(run.space.init_psi(), 4)
    theta = run.theta(run.model)
    per_sample = run.functional_losses(run.model, batch)
    operator = run.hvp_operator(per_sample, theta)
    for seed in (0, 1):
        g = torch.Generator().manual_seed(seed)
        v = {k: torch.randn(p.shape, generator=g) for k, p in theta.items()}
        expected = default_hvp(lambda th: per_sample(th).mean(), theta, v, mode="forward-over-reverse")
        got = operator(v)
        for k in theta:
            torch.testing.assert_close(got[k], expected[k], rtol=1e-3, atol=1e-5)

    reg = registry()
    task = TaskWithHvp()
    reg.plugins["tasks"]["unet"] = task
    run = make_run(tmp_path / "own", "linear", reg)
    run.model = run.create_model()
    operator = run.hvp_operator(per_sample, theta)
    v = {k: torch.ones_like(p) for k, p in theta.items()}
    assert all(torch.equal(h, 2 * v[k]) for k, h in operator(v).items())
    assert task.calls == 1
