"""Cost of AutoSimulate's phases for the unet task, measured with the core's own functions.

    python plugins/autosim_unet/bench.py --out bench-unet.json [--size 64 --batch 32 --width 16]

Reports the fastest of --repeats calls (after a warm-up call), as wall-clock and process-CPU
seconds; CPU seconds are the steadier figure when other work shares the cores:
  epoch            one fine-tuning epoch over the K rendered images (the core's default train_step)
  eval             a forward pass and the metrics over the validation set
  val_gradient     grad_theta L_val, chunked as the run does it
  hypergrad.*      each estimator's full hypergradient, validation gradient included, and its
                   ratio to one epoch
  c_k              the per-sample directional derivatives by one jvp, against K separate
                   backward passes (what the jvp replaces)
  hvp              one Hessian-vector product of the mean training loss, against one
                   forward + backward of it
  peak_rss_mib     the process's peak resident memory
Image content does not change the cost, so images and masks are random.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from autosim_core.defaults import core_defaults
from autosim_core.estimators import HypergradProblem, approx_quadratic, linear, no_val, quadratic
from autosim_core.hypergrad import Params, default_hvp, directional_derivatives, loss_gradient
from autosim_core.records import Batch, Example
from autosim_core.space import Bounded, Categorical, Normal, ParameterSpace
from torch.func import functional_call, grad

from autosim_unet.plugin import UNetSettings, UNetTask


def timed(fn: Callable[[], Any], repeats: int) -> tuple[dict[str, float], Any]:
    """Fastest wall-clock and process-CPU seconds of ``fn`` over ``repeats`` calls after a
    warm-up call. The minimum, not the mean: on a shared machine the noise only ever adds."""
    result = fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {"wall": min(wall), "cpu": min(cpu)}, result


def ratio(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: a[k] / b[k] for k in a}


def random_examples(n: int, size: int, classes: int, generator: torch.Generator) -> list[Example]:
    return [Example(image=torch.rand(3, size, size, generator=generator),
                    mask=torch.randint(0, classes, (size, size), generator=generator)) for _ in range(n)]


def peak_rss_mib() -> float:
    # ru_maxrss is KiB on Linux and bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--batch", type=int, default=32, help="K: images rendered per iteration")
    parser.add_argument("--train-batch-size", type=int, default=32, help="minibatch of the fine-tune")
    parser.add_argument("--val", type=int, default=100, help="validation images")
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--depth", type=int, default=1)
    parser.add_argument("--freeze", type=int, default=0)
    parser.add_argument("--cg-iters", type=int, default=10, help="max CG iterations of the quadratic estimator")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    task = UNetTask()
    settings = UNetSettings(width=args.width, depth=args.depth, freeze=args.freeze)
    torch.manual_seed(0)
    model = task.create_model(settings=settings)
    g = torch.Generator().manual_seed(0)
    train = task.collate(examples=random_examples(args.batch, args.size, settings.num_classes, g), settings=settings)
    val = task.collate(examples=random_examples(args.val, args.size, settings.num_classes, g), settings=settings)

    def losses(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return task.loss(outputs=outputs, targets=targets, settings=settings)

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=1e-3)

    def epoch() -> None:
        model.train()
        for minibatch in train.chunks(args.train_batch_size):
            core_defaults.train_step(model=model, batch=minibatch, optimizer=optimizer, loss_fn=losses)

    def evaluate() -> dict[str, float]:
        model.eval()
        with torch.no_grad():
            outputs = torch.cat([model(c.inputs) for c in val.chunks(args.eval_batch_size)])
        return task.evaluate(outputs=outputs, targets=val.targets, settings=settings)

    results: dict[str, Any] = {}
    results["epoch"], _ = timed(epoch, args.repeats)
    results["eval"], _ = timed(evaluate, args.repeats)

    # The functions the run hands an estimator (autosim_core.run.Run.functional_losses / val_gradient).
    theta: Params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    fixed = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}

    def per_sample_of(batch: Batch) -> Callable[[Params], torch.Tensor]:
        return lambda th: losses(functional_call(model, {**fixed, **th}, (batch.inputs,)), batch.targets)

    per_sample = per_sample_of(train)

    def mean_loss(th: Params) -> torch.Tensor:
        return per_sample(th).mean()

    def val_gradient() -> Params:
        total = {k: torch.zeros_like(v) for k, v in theta.items()}
        for chunk in val.chunks(args.eval_batch_size):
            f = per_sample_of(chunk)
            gv = grad(lambda th, f=f: f(th).sum() / len(val))(theta)
            for k in total:
                total[k] += gv[k].detach()
        return total

    space = ParameterSpace(light=Normal(mean=1.0, std=0.3, low=0.0), size=Bounded(low=0.2, high=0.8, mean=0.5),
                           shape=Categorical(choices=["sphere", "cube", "cylinder"]))
    psi = space.init_psi()
    latents = space.sample(psi, args.batch, torch.Generator().manual_seed(1))
    problem = HypergradProblem(
        params=theta, train_losses=per_sample, hvp=lambda v: default_hvp(mean_loss, theta, v),
        val_gradient=val_gradient, log_prob=lambda: space.log_prob(psi, latents), psi=psi)

    model.eval()
    results["val_gradient"], g_val = timed(val_gradient, args.repeats)
    estimators: dict[str, Callable[[], Any]] = {
        "quadratic": lambda: quadratic(problem, damping=0.01, max_iter=args.cg_iters, tol=1e-4),
        "approx-quadratic": lambda: approx_quadratic(problem),
        "linear": lambda: linear(problem),
        "no-val": lambda: no_val(problem),
    }
    hyper: dict[str, Any] = {}
    for name, fn in estimators.items():
        seconds, estimate = timed(fn, args.repeats)
        hyper[name] = {"seconds": seconds, "per_epoch": ratio(seconds, results["epoch"]),
                       "diagnostics": {k: v for k, v in estimate.diagnostics.items()
                                       if k in ("cg_iterations", "negative_curvature", "cg_residual")}}
    results["hypergrad"] = hyper

    def c_by_jvp() -> torch.Tensor:
        return directional_derivatives(per_sample, theta, g_val)

    def c_by_backward() -> torch.Tensor:
        out = []
        for k in range(len(train)):
            single = per_sample_of(train.select(slice(k, k + 1)))
            gk = loss_gradient(lambda th, f=single: f(th).sum(), theta)
            out.append(sum((gk[n] * g_val[n]).sum() for n in theta))
        return torch.stack(out)

    jvp_s, c_jvp = timed(c_by_jvp, args.repeats)
    loop_s, c_loop = timed(c_by_backward, args.repeats)
    results["c_k"] = {"jvp": jvp_s, "backward_loop": loop_s, "loop_over_jvp": ratio(loop_s, jvp_s),
                      "max_abs_difference": float((c_jvp - c_loop).abs().max())}

    hvp_s, _ = timed(lambda: default_hvp(mean_loss, theta, g_val), args.repeats)
    fb_s, _ = timed(lambda: loss_gradient(mean_loss, theta), args.repeats)
    results["hvp"] = {"hvp": hvp_s, "forward_backward": fb_s, "hvp_over_forward_backward": ratio(hvp_s, fb_s)}
    # CG stops early on negative curvature or a small residual, so the measured quadratic cost
    # depends on the model's state; this is its cost when all --cg-iters iterations run.
    worst = {k: results["val_gradient"][k] + args.cg_iters * hvp_s[k] + jvp_s[k] for k in hvp_s}
    hyper["quadratic"]["worst_case_seconds"] = worst
    hyper["quadratic"]["worst_case_per_epoch"] = ratio(worst, results["epoch"])

    report = {
        "setup": {"size": args.size, "batch": args.batch, "train_batch_size": args.train_batch_size,
                  "val": args.val, "width": args.width, "depth": args.depth, "freeze": args.freeze,
                  "cg_iters": args.cg_iters, "repeats": args.repeats, "threads": torch.get_num_threads(),
                  "parameters": sum(p.numel() for p in model.parameters()),
                  "trainable": sum(p.numel() for p in trainable),
                  "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
                  "device": "cpu"},
        "seconds": results,
        "peak_rss_mib": peak_rss_mib(),
    }
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    return report


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
