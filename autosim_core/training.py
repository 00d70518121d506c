"""Training and scoring the task's model: creation, fine-tuning, evaluation, the validation
pass (scores and gradient from one forward) and Hessian-vector products of the training loss.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pluggy
import torch
from torch.func import functional_call

from .clock import Clock
from .config import Training as TrainingSettings
from .hookspecs import MetricAccumulator
from .hypergrad import Params, detach_tree, ggn_operator, hvp_operator
from .plugins import has_impl
from .records import Batch


def _cat(parts: list[Any]) -> Any:
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts)
    return [x for part in parts for x in part]


def _state_versions(model: torch.nn.Module) -> tuple[int, ...]:
    """Changes whenever a parameter or buffer of ``model`` is written in place (an optimiser
    step, load_state_dict): the key under which a validation pass stays valid."""
    return tuple(t._version for t in (*model.parameters(), *model.buffers()))


@dataclass
class ValidationPass:
    """One pass over an evaluation set under autograd: what the no-grad evaluation reports
    (mean loss, the task's metrics) and the gradient of the mean loss, from the same forward."""

    loss: float
    metrics: dict[str, float]
    gradient: Params


class ConcatenatingAccumulator:
    """The default ``MetricAccumulator``: keeps every chunk's outputs and targets and calls the
    task's whole-set ``metrics_fn`` on their concatenation."""

    def __init__(self, metrics_fn: Callable[[Any, Any], dict[str, Any]]):
        self.metrics_fn = metrics_fn
        self.outputs: list[Any] = []
        self.targets: list[Any] = []

    def update(self, outputs: Any, targets: Any) -> None:
        self.outputs.append(outputs)
        self.targets.append(targets)

    def compute(self) -> dict[str, Any]:
        return self.metrics_fn(_cat(self.outputs), _cat(self.targets))


def validation_pass(model: torch.nn.Module, batch: Batch, loss_fn: Callable[[Any, Any], torch.Tensor],
                    metrics_fn: Callable[[Any, Any], dict[str, Any]], chunk_size: int,
                    evaluation: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
                    accumulator: MetricAccumulator | None = None,
                    gradient_rows: torch.Tensor | None = None) -> ValidationPass:
    """Mean loss, metrics and grad_theta of the mean loss over ``batch`` in one forward pass.

    theta are the model's trainable parameters (frozen ones get no gradient). The metrics come
    from the detached outputs, so they equal a no-grad evaluation's: chunk by chunk through
    ``accumulator`` where the task has one, else ``metrics_fn`` on the concatenated outputs.
    ``evaluation`` wraps the work a no-grad evaluation would do as well (forward, losses,
    metrics): a run books it as evaluation time, and only the backward passes as the gradient's
    own cost. ``gradient_rows`` (indices into ``batch``): the gradient is the mean loss's over
    these examples only, which go first and alone under autograd; the others are only scored,
    without a graph, and the loss and metrics are still the whole batch's.
    """
    model.eval()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    if gradient_rows is None:
        parts, n_gradient = [(batch, True)], len(batch)
    else:
        scored_only = torch.ones(len(batch), dtype=torch.bool)
        scored_only[gradient_rows] = False
        parts = [(batch.select(gradient_rows), True), (batch.select(scored_only.nonzero().flatten()), False)]
        n_gradient = len(gradient_rows)
    metrics_acc = accumulator if accumulator is not None else ConcatenatingAccumulator(metrics_fn)
    losses = []
    for part, differentiate in parts:
        for chunk in part.chunks(chunk_size) if len(part) else []:
            with torch.set_grad_enabled(differentiate):
                with evaluation():
                    out = model(chunk.inputs)
                    chunk_losses = loss_fn(out, chunk.targets)
                    with torch.no_grad():
                        metrics_acc.update(detach_tree(out), chunk.targets)
                if differentiate:
                    grads = torch.autograd.grad(chunk_losses.sum() / n_gradient, params, allow_unused=True)
                    for acc, g in zip(total, grads, strict=True):
                        if g is not None:
                            acc += g
            losses.append(chunk_losses.detach())
    with evaluation(), torch.no_grad():
        metrics = metrics_acc.compute()
        loss = float(torch.cat(losses).mean())
    return ValidationPass(loss, {k: float(v) for k, v in metrics.items()}, dict(zip(names, total, strict=True)))


class Training:
    """The task's model under one ``[training]`` recipe: what a run trains, evaluates and
    differentiates. ``val`` is the validation set (None without one)."""

    def __init__(self, pm: pluggy.PluginManager, *, task: str, task_settings: Any, training: TrainingSettings,
                 seed: int, device: torch.device, clock: Clock, generator: torch.Generator):
        self.pm = pm
        self.task = task
        self.task_settings = task_settings
        self.settings = training
        self.seed = seed
        self.device = device
        self.clock = clock
        self.generator = generator
        self.val: Batch | None = None
        self.last_validation: tuple[torch.nn.Module, tuple[int, ...], float, dict[str, float]] | None = None
        """The validation scores of the last history row: (model, its state versions, loss, metrics)."""
        self._val_pass: tuple[torch.nn.Module, tuple[Any, ...], ValidationPass] | None = None
        """The last validation pass: (model, (its state versions, the gradient's rows or None), result)."""

    def create_model(self) -> torch.nn.Module:
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            model = self.pm.hook.create_model(settings=self.task_settings)
        return model.to(self.device)

    def create_model_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        t = self.settings
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the task's model has no trainable parameters (all are frozen)")
        if t.optimizer == "adam":
            return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)

    def theta(self, model: torch.nn.Module) -> Params:
        return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}

    def losses(self, outputs: Any, targets: Any) -> torch.Tensor:
        return self.pm.hook.loss(outputs=outputs, targets=targets, settings=self.task_settings)

    def functional_losses(self, model: torch.nn.Module, batch: Batch) -> Callable[[Params], torch.Tensor]:
        """theta -> per-sample losses of ``batch``, with frozen parameters and buffers fixed."""
        fixed = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
        fixed.update(dict(model.named_buffers()))

        def per_sample(theta: Params) -> torch.Tensor:
            outputs = functional_call(model, {**fixed, **theta}, (batch.inputs,))
            return self.losses(outputs, batch.targets)

        return per_sample

    def hvp_operator(self, per_sample: Callable[[Params], torch.Tensor], theta: Params) -> Callable[[Params], Params]:
        """v -> H v of the mean of ``per_sample`` at ``theta``: the task's ``hvp`` hook where it
        has one, otherwise the core's, which builds the gradient's graph once for all products."""
        def mean_loss(th: Params) -> torch.Tensor:
            return per_sample(th).mean()

        if has_impl(self.pm, "hvp", "task"):
            return lambda v: self.pm.hook.hvp(loss_fn=mean_loss, params=theta, vector=v)
        return hvp_operator(mean_loss, theta)

    def ggn_operator(self, model: torch.nn.Module, batch: Batch, theta: Params) -> Callable[[Params], Params]:
        """v -> G v, the Gauss-Newton matrix of the mean training loss of ``batch`` at ``theta``
        (``hypergrad.ggn_operator``): the model's outputs and the task's loss of them, apart."""
        fixed = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
        fixed.update(dict(model.named_buffers()))

        def outputs(th: Params) -> Any:
            return functional_call(model, {**fixed, **th}, (batch.inputs,))

        def mean_loss(out: Any) -> torch.Tensor:
            return self.losses(out, batch.targets).mean()

        return ggn_operator(outputs, mean_loss, theta)

    def fine_tune(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Batch,
                  epochs: int | None = None, orders: list[torch.Tensor] | None = None,
                  after_step: Callable[[], None] | None = None) -> float:
        """epsilon epochs of minibatch training on ``batch``; returns the last epoch's mean loss.

        Each epoch visits the examples in a random order drawn from the run's generator, or in
        the given ``orders`` (one per epoch; see ``epoch_orders``). ``after_step`` is called after
        every optimiser step (a learning-rate schedule's step)."""
        t = self.settings
        model.train()
        last: list[float] = []
        with self.clock.timed("train"):
            for epoch in range(len(orders) if orders is not None else epochs or t.epochs):
                last = []
                order = orders[epoch] if orders is not None else torch.randperm(len(batch), generator=self.generator)
                for start in range(0, len(batch), t.batch_size):
                    minibatch = batch.select(order[start:start + t.batch_size])
                    last.append(self.pm.hook.train_step(model=model, batch=minibatch, optimizer=optimizer,
                                                        loss_fn=self.losses, settings=self.task_settings))
                    if after_step is not None:
                        after_step()
        return sum(last) / max(len(last), 1)

    def epoch_orders(self, count: int, epochs: int | None = None) -> list[torch.Tensor]:
        """The orders ``fine_tune`` would draw for ``epochs`` epochs on ``count`` examples, drawn
        now: training elsewhere (a worker) with them trains as this process would have."""
        return [torch.randperm(count, generator=self.generator) for _ in range(epochs or self.settings.epochs)]

    def validation_pass(self, model: torch.nn.Module, gradient_rows: torch.Tensor | None = None) -> ValidationPass:
        """Loss, metrics and gradient on the validation set at the model's current theta; the
        gradient over ``gradient_rows`` of the set only, when given.

        One forward pass serves the validation gradient and the validation scores of the same
        model: the result is kept while no parameter or buffer of the model changes (and the
        same rows are asked for), and ``validation_row`` reuses it. The forward pass and the
        metrics are booked to "eval", which the scores would have cost anyway; the backward pass
        to the enclosing phase.
        """
        assert self.val is not None
        rows = None if gradient_rows is None else tuple(int(i) for i in gradient_rows)
        cached = self._val_pass
        if cached is not None and cached[0] is model and cached[1] == (_state_versions(model), rows):
            return cached[2]
        result = validation_pass(model, self.val, self.losses, self._metrics, self.settings.eval_batch_size,
                                 lambda: self.clock.timed("eval"), self.metric_accumulator(), gradient_rows)
        if "metric" not in result.metrics:
            raise KeyError(f"task {self.task!r}: evaluate() returned no 'metric' key")
        self._val_pass = (model, (_state_versions(model), rows), result)
        return result

    def val_gradient(self, model: torch.nn.Module, gradient_rows: torch.Tensor | None = None) -> Params:
        """grad_theta of the mean validation loss (over ``gradient_rows`` only, when given),
        accumulated over chunks."""
        return self.validation_pass(model, gradient_rows).gradient

    def _metrics(self, outputs: Any, targets: Any) -> dict[str, Any]:
        return self.pm.hook.evaluate(outputs=outputs, targets=targets, settings=self.task_settings)

    def metric_accumulator(self) -> MetricAccumulator:
        """An empty accumulator of the task's metrics: the task's own (``metric_accumulator``
        hook), which keeps only what its metric needs, or the core's, which concatenates."""
        own = self.pm.hook.metric_accumulator(settings=self.task_settings)
        return own if own is not None else ConcatenatingAccumulator(self._metrics)

    def evaluate(self, model: torch.nn.Module, batch: Batch) -> tuple[float, dict[str, float]]:
        """Mean loss and the task's metrics on a whole evaluation set, chunk by chunk."""
        model.eval()
        accumulator = self.metric_accumulator()
        losses = []
        with torch.no_grad():
            for chunk in batch.chunks(self.settings.eval_batch_size):
                out = model(chunk.inputs)
                losses.append(self.losses(out, chunk.targets))
                accumulator.update(out, chunk.targets)
            metrics = accumulator.compute()
        if "metric" not in metrics:
            raise KeyError(f"task {self.task!r}: evaluate() returned no 'metric' key")
        return float(torch.cat(losses).mean()), {k: float(v) for k, v in metrics.items()}

    def validation_row(self, model: torch.nn.Module) -> dict[str, Any]:
        """``val_loss``, ``val_metric`` and ``val_details`` of a history row (None without a set)."""
        if self.val is None:
            return {"val_loss": None, "val_metric": None}
        cached = self._val_pass
        if cached is not None and cached[0] is model and cached[1][0] == _state_versions(model):
            val_loss, metrics = cached[2].loss, dict(cached[2].metrics)
        else:
            with self.clock.timed("eval"):
                val_loss, metrics = self.evaluate(model, self.val)
        self.last_validation = (model, _state_versions(model), val_loss, dict(metrics))
        return {"val_loss": val_loss, "val_metric": metrics.pop("metric"), "val_details": metrics}

    def scores(self, model: torch.nn.Module, batch: Batch) -> tuple[float, dict[str, float]]:
        """``evaluate`` on ``batch``, or the scores of the last history row where they are this
        very model's on the validation set (the last iteration usually scored it already)."""
        last = self.last_validation
        if batch is self.val and last is not None and last[0] is model and last[1] == _state_versions(model):
            return last[2], last[3]
        return self.evaluate(model, batch)
