"""Cost of AutoSimulate's phases for the detection tasks, measured with the core's own functions.

    python plugins/autosim_yolo/bench.py --out bench-yolo.json [--size 160 --batch 32 --models tiny spp faster-rcnn]

Each model is measured in a process of its own (so that its peak resident memory is its own):
  train_images_per_second   images per second of fine-tuning (the core's default train_step)
  epoch                     one fine-tuning epoch over the K rendered images, the unit of ``per_epoch``
  val_pass                  the run's validation pass (loss, mAP and grad_theta L_val from one forward)
  hvp                       one Hessian-vector product of the mean training loss (reverse-over-reverse,
                            the core's default), against one forward + backward
  c_k                       the per-image directional derivatives by one jvp of the per-image loss
                            vector, against K separate backward passes (and their largest difference)
  hypergrad.<estimator>     one hypergradient of each estimator given the validation gradient (which
                            the validation pass above computes beside the scores), in fine-tune epochs
  peak_rss_mib              the process's peak resident memory
Images are rendered by the plugin's ``shapes`` simulator from its ``target`` preset. Reported are the
fastest of --repeats calls after a warm-up call, as wall-clock and process-CPU seconds.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from autosim_core.config import parse_config
from autosim_core.estimators import HypergradProblem, approx_quadratic, linear, no_val, quadratic
from autosim_core.hypergrad import Params, directional_derivatives, hvp_operator, loss_gradient
from autosim_core.run import Run

MODELS = ("tiny", "spp", "faster-rcnn")


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


def peak_rss_mib() -> float:
    # ru_maxrss is KiB on Linux and bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def task_config(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    if args.model == "faster-rcnn":
        return "faster-rcnn", {"input_size": args.rcnn_size}
    return "yolo", {"variant": args.model, "input_size": args.size, "width": args.width, "norm": args.norm}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """One model's figures, in this process."""
    task, task_settings = task_config(args)
    with tempfile.TemporaryDirectory() as tmp:
        config = parse_config({
            "seed": 0, "simulator": {"name": "shapes", "start": "target",
                                     "settings": {"image_size": args.image_size}},
            "task": {"name": task, "settings": task_settings},
            "training": {"epochs": 1, "batch_size": args.train_batch_size, "eval_batch_size": args.eval_batch_size},
            "budget": {"iterations": 1},
            "validation": {"preset": "target", "count": args.val, "seed": 1},
            "cache_dir": str(Path(tmp) / "cache")})
        run = Run(config, Path(tmp) / "run")
        run.val = run.load_data("validation")
        model = run.create_model()
        optimizer = run.create_model_optimizer(model)
        psi = run.space.init_psi()
        scenes, train = run.render_training(psi, args.batch)

        results: dict[str, Any] = {}
        results["epoch"], _ = timed(lambda: run.fine_tune(model, optimizer, train, epochs=1), args.repeats)
        results["train_images_per_second"] = {k: args.batch / v for k, v in results["epoch"].items()}

        def per_epoch(seconds: dict[str, float]) -> dict[str, float]:
            return ratio(seconds, results["epoch"])

        model.eval()

        def val_pass() -> Any:
            run.training._val_pass = None  # the cache a fresh pass must not hit
            return run.validation_pass(model)

        vp_s, fused = timed(val_pass, args.repeats)
        results["val_pass"] = {"seconds": vp_s, "per_epoch": per_epoch(vp_s), "val_metric": fused.metrics["metric"]}
        g_val = fused.gradient

        theta: Params = run.theta(model)
        per_sample = run.functional_losses(model, train)

        def mean_loss(th: Params) -> torch.Tensor:
            return per_sample(th).mean()

        fb_s, _ = timed(lambda: loss_gradient(mean_loss, theta), args.repeats)
        hvp = hvp_operator(mean_loss, theta)
        hvp_s, _ = timed(lambda: hvp(g_val), args.repeats)
        results["hvp"] = {"forward_backward": fb_s, "seconds": hvp_s, "per_epoch": per_epoch(hvp_s),
                          "over_forward_backward": ratio(hvp_s, fb_s)}

        jvp_s, c_jvp = timed(lambda: directional_derivatives(per_sample, theta, g_val, method="jvp"), args.repeats)

        def c_by_backward() -> torch.Tensor:
            out = []
            for k in range(len(train)):
                single = run.functional_losses(model, train.select(slice(k, k + 1)))
                gk = loss_gradient(lambda th, f=single: f(th).sum(), theta)
                out.append(sum((gk[n] * g_val[n]).sum() for n in theta))
            return torch.stack(out)

        loop_s, c_loop = timed(c_by_backward, 1)
        results["c_k"] = {"jvp": {"seconds": jvp_s, "per_epoch": per_epoch(jvp_s)},
                          "backward_loop": {"seconds": loop_s, "per_epoch": per_epoch(loop_s)},
                          "backward_loop_over_jvp": ratio(loop_s, jvp_s),
                          "max_abs_difference": float((c_jvp - c_loop).abs().max()),
                          "max_abs_c": float(c_loop.abs().max())}

        def problem() -> HypergradProblem:
            return HypergradProblem(params=theta, train_losses=per_sample, hvp=hvp_operator(mean_loss, theta),
                                    val_gradient=lambda: g_val, log_prob=lambda: run.log_prob(psi, scenes), psi=psi)

        estimators: dict[str, Callable[[HypergradProblem], Any]] = {
            "quadratic": lambda p: quadratic(p, damping=0.01, max_iter=args.cg_iters, tol=1e-4),
            "approx-quadratic": approx_quadratic, "linear": linear, "no-val": no_val}
        results["hypergrad"] = {}
        for name, fn in estimators.items():
            seconds, _ = timed(lambda fn=fn: fn(problem()), args.repeats)
            results["hypergrad"][name] = {"seconds": seconds, "per_epoch": per_epoch(seconds)}

    trainable = [p for p in model.parameters() if p.requires_grad]
    input_size = args.rcnn_size if args.model == "faster-rcnn" else args.size
    return {"model": args.model, "setup": {
                "input_size": input_size, "image_size": args.image_size, "batch": args.batch,
                "train_batch_size": args.train_batch_size, "val": args.val, "width": args.width, "norm": args.norm,
                "cg_iters": args.cg_iters, "repeats": args.repeats, "threads": torch.get_num_threads(),
                "parameters": sum(p.numel() for p in model.parameters()),
                "trainable": sum(p.numel() for p in trainable)},
            "seconds": results, "peak_rss_mib": peak_rss_mib()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--model", choices=MODELS, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=160, help="network input side in pixels")
    parser.add_argument("--rcnn-size", type=int, default=160, help="Faster R-CNN's input side in pixels")
    parser.add_argument("--image-size", type=int, default=128, help="rendered image side in pixels")
    parser.add_argument("--batch", type=int, default=32, help="K: images rendered per iteration")
    parser.add_argument("--train-batch-size", type=int, default=16)
    parser.add_argument("--val", type=int, default=64)
    parser.add_argument("--eval-batch-size", type=int, default=32)
    parser.add_argument("--width", type=float, default=0.5, help="yolo channel multiplier")
    parser.add_argument("--norm", choices=("group", "batch"), default="group")
    parser.add_argument("--cg-iters", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model:
        report = measure(args)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        return report

    report: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(),
                              "machine": platform.machine(), "device": "cpu", "models": {}}
    forwarded = list(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            out = Path(tmp) / f"{name}.json"
            cmd = [sys.executable, __file__, *_without(forwarded, "--models", "--out"), "--model", name,
                   "--out", str(out)]
            subprocess.run(cmd, check=True)
            report["models"][name] = json.loads(out.read_text())
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


def _without(argv: list[str], *options: str) -> list[str]:
    """``argv`` less the given options and their values."""
    out, skip = [], False
    for a in argv:
        if skip and not a.startswith("--"):
            continue
        skip = a.split("=", 1)[0] in options
        if not skip:
            out.append(a)
    return out


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
