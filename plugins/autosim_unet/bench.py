"""Cost of AutoSimulate's phases for the unet task, measured with the core's own functions.

    python plugins/autosim_unet/bench.py --out bench-unet.json [--size 64 --batch 32 --width 16]

Reports the fastest of --repeats calls (after a warm-up call), as wall-clock and process-CPU
seconds; CPU seconds are the steadier figure when other work shares the cores. The unit of the
``per_epoch`` figures is one fine-tuning epoch over the K rendered images.
  epoch            one fine-tuning epoch over the K rendered images (the core's default train_step)
  eval             a no-grad forward pass and the metrics over the validation set
  val_pass         the run's validation pass: loss, metrics and grad_theta L_val from one forward
                   pass (autosim_core.training.validation_pass); ``forward`` is the part a run books to
                   "eval", ``backward`` the part it books to "hypergrad"
  val_gradient     grad_theta L_val as a pass of its own (torch.func.grad, chunked), the way it
                   was computed beside a separate evaluation
  val_pass_subset  the validation pass with the gradient from N of the images (autosimulate's
                   gradient_validation; --gradient-validation sizes), the scores from all
  val_gradient_subsets  cosine of each of --subsets seeded subsets' gradients with the whole set's
  hvp              one Hessian-vector product of the mean training loss in each mode of
                   autosim_core.hypergrad.HVP_MODES, against one forward + backward of it;
                   ``shared_graph``: one more product through hvp_operator's kept graph;
                   ``gauss-newton``: the first and a further product of ggn_operator
  c_k              the per-sample directional derivatives by one jvp, by a central difference
                   (with its error against the jvp), and by K separate backward passes
  hypergrad.*      each estimator's cost beyond the fine-tune and the validation scores:
                   ``separate``: validation gradient in a pass of its own, forward-over-reverse
                   HVPs, c_k by jvp; ``before``: of the fused validation pass only its backward
                   part (its forward pass is the evaluation the iteration does anyway, booked to
                   "eval" by a run), HVPs sharing one graph (hvp_operator), c_k by jvp; ``after``:
                   the same with c_k by central difference (autosimulate's c_k = "auto" between
                   its checks); ``after_check``: an iteration that "auto" checks (both c_k);
                   ``gradient_validation_N``: ``after`` with the gradient from N validation images;
                   ``curvature_N`` / ``gauss_newton_curvature_N``: ``after`` (``gauss_newton``)
                   with the curvature products over N of the K scenes (autosimulate's
                   curvature_scenes; --curvature-scenes sizes);
                   ``effect``: what the central difference and the subsets do to the estimate,
                   in units of its standard error (max over psi coordinates), and the cosine of
                   the subsets' hypergradients with the whole set's
  run              short AutoSimulate runs at these sizes (random images as renders) with their
                   seconds per phase and the overhead: wall - sum of phases, also as a fraction
  peak_rss_mib     the process's peak resident memory
Image content does not change the cost, so images and masks are random.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from autosim_core.builtin_settings import AutoSimulateSettings
from autosim_core.config import parse_config
from autosim_core.defaults import core_defaults
from autosim_core.estimators import (
    HypergradProblem,
    approx_quadratic,
    approx_quadratic_plugin,
    linear,
    linear_plugin,
    no_val,
    quadratic,
    quadratic_plugin,
)
from autosim_core.hookspecs import hookimpl
from autosim_core.hypergrad import (
    CK_METHODS,
    DEFAULT_HVP_MODE,
    HVP_MODES,
    Params,
    central_difference_step,
    default_hvp,
    directional_derivatives,
    error_over_stderr,
    ggn_operator,
    hvp_operator,
    loss_gradient,
    tree_dot,
    tree_norm,
)
from autosim_core.plugins import GROUPS, Registry
from autosim_core.records import Batch, Example
from autosim_core.run import Run
from autosim_core.searchers import AutoSimulate
from autosim_core.space import Bounded, Categorical, Normal, ParameterSpace
from autosim_core.training import ValidationPass, validation_pass
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


def interleaved(fns: dict[str, Callable[[], tuple[Any, dict[str, float]]]],
                rounds: int) -> dict[str, tuple[dict[str, float], Any]]:
    """``timed`` for several functions at once, in rounds that call each once (after one warm-up
    call each): load that comes and goes on a shared machine then falls on all of them alike.
    Each function returns its result and the seconds of its own not to count (wall, cpu)."""
    results = {name: fn()[0] for name, fn in fns.items()}
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            results[name], excluded = fn()
            wall[name].append(time.perf_counter() - start - excluded["wall"])
            cpu[name].append(time.process_time() - start_cpu - excluded["cpu"])
    return {name: ({"wall": min(wall[name]), "cpu": min(cpu[name])}, results[name]) for name in fns}


def ratio(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: a[k] / b[k] for k in a}


def random_examples(n: int, size: int, classes: int, generator: torch.Generator) -> list[Example]:
    return [Example(image=torch.rand(3, size, size, generator=generator),
                    mask=torch.randint(0, classes, (size, size), generator=generator)) for _ in range(n)]


class RandomImages:
    """A simulator whose renders are random images and masks: a run at the benchmark's sizes
    without a renderer's cost, for the run's own overhead."""

    def __init__(self, size: int, classes: int):
        self.size, self.classes = size, classes

    @hookimpl
    def parameter_space(self) -> ParameterSpace:
        return ParameterSpace(light=Normal(mean=1.0, std=0.3, low=0.0), size=Bounded(low=0.2, high=0.8, mean=0.5))

    @hookimpl
    def render(self, scenes: list[dict[str, Any]]) -> list[Example]:
        return random_examples(len(scenes), self.size, self.classes,
                               torch.Generator().manual_seed(int(scenes[0]["seed"])))


def short_run(args: argparse.Namespace, estimator: str, settings: UNetSettings) -> dict[str, Any]:
    """A run of --run-iterations AutoSimulate iterations; the overhead is its wall time minus
    the sum of its phases (render, train, hypergrad, eval)."""
    plugins: dict[str, dict[str, Any]] = {k: {} for k in GROUPS}
    plugins["simulators"]["random"] = RandomImages(args.size, settings.num_classes)
    plugins["tasks"]["unet"] = UNetTask()
    plugins["estimators"][estimator] = {"quadratic": quadratic_plugin, "approx-quadratic": approx_quadratic_plugin,
                                        "linear": linear_plugin}[estimator]
    plugins["searchers"]["autosimulate"] = AutoSimulate
    with tempfile.TemporaryDirectory() as tmp:
        config = parse_config({
            "seed": 0, "simulator": {"name": "random"},
            "task": {"name": "unet", "settings": settings.model_dump()},
            "searcher": {"name": "autosimulate", "settings": {"scenes_per_iteration": args.batch}},
            "estimator": {"name": estimator,
                          "settings": {"max_iter": args.cg_iters} if estimator == "quadratic" else {}},
            "training": {"epochs": args.run_epochs, "batch_size": args.train_batch_size,
                         "eval_batch_size": args.eval_batch_size},
            "budget": {"iterations": args.run_iterations},
            "validation": {"preset": None, "count": args.val, "seed": 1}, "cache_dir": str(Path(tmp) / "cache")})
        summary = Run(config, Path(tmp) / "run", registry=Registry(plugins=plugins)).execute()
    phases = sum(summary["seconds_split"].values())
    return {"seconds": summary["seconds"], "seconds_split": summary["seconds_split"],
            "overhead_seconds": summary["seconds"] - phases,
            "overhead_fraction": (summary["seconds"] - phases) / summary["seconds"]}


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
    parser.add_argument("--backward-loop", action=argparse.BooleanOptionalAction, default=True,
                        help="also time c_k by K separate backward passes (slow)")
    parser.add_argument("--run-iterations", type=int, default=2, help="iterations of the short runs (0: none)")
    parser.add_argument("--run-epochs", type=int, default=8, help="fine-tune epochs per iteration of the short runs")
    parser.add_argument("--gradient-validation", type=int, nargs="*", default=[32, 16],
                        help="validation-gradient subset sizes to measure (autosimulate's gradient_validation)")
    parser.add_argument("--curvature-scenes", type=int, nargs="*", default=[8, 16],
                        help="curvature subset sizes to measure (autosimulate's curvature_scenes)")
    parser.add_argument("--subsets", type=int, default=8, help="seeded subsets per size for their effect")
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

    def per_epoch(seconds: dict[str, float]) -> dict[str, float]:
        return ratio(seconds, results["epoch"])

    # The functions the run hands an estimator (autosim_core.run.Run.functional_losses / val_gradient).
    theta: Params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    fixed = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}

    def per_sample_of(batch: Batch) -> Callable[[Params], torch.Tensor]:
        return lambda th: losses(functional_call(model, {**fixed, **th}, (batch.inputs,)), batch.targets)

    per_sample = per_sample_of(train)

    def mean_loss(th: Params) -> torch.Tensor:
        return per_sample(th).mean()

    def val_gradient_separate() -> Params:
        total = {k: torch.zeros_like(v) for k, v in theta.items()}
        for chunk in val.chunks(args.eval_batch_size):
            f = per_sample_of(chunk)
            gv = grad(lambda th, f=f: f(th).sum() / len(val))(theta)
            for k in total:
                total[k] += gv[k].detach()
        return total

    def metrics(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        return task.evaluate(outputs=outputs, targets=targets, settings=settings)

    forward_seconds: list[tuple[float, float]] = []

    @contextlib.contextmanager
    def forward_clock() -> Iterator[None]:
        start, start_cpu = time.perf_counter(), time.process_time()
        yield
        forward_seconds.append((time.perf_counter() - start, time.process_time() - start_cpu))

    def val_pass(rows: torch.Tensor | None = None) -> ValidationPass:
        forward_seconds.clear()
        return validation_pass(model, val, losses, metrics, args.eval_batch_size, forward_clock, gradient_rows=rows)

    def split_val_pass(rows: torch.Tensor | None) -> tuple[dict[str, Any], ValidationPass]:
        """The split of the fastest fused pass: its forward part is what a run books to "eval",
        the rest (the backward passes) to "hypergrad"."""
        val_pass(rows)
        calls = []
        for _ in range(args.repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            fused = val_pass(rows)
            total = {"wall": time.perf_counter() - start, "cpu": time.process_time() - start_cpu}
            calls.append((total, {"wall": sum(w for w, _ in forward_seconds),
                                  "cpu": sum(c for _, c in forward_seconds)}))
        vp_s = {k: min(t[k] for t, _ in calls) for k in ("wall", "cpu")}
        fwd = {k: min(calls, key=lambda call, k=k: call[0][k])[1][k] for k in ("wall", "cpu")}
        marginal = {k: vp_s[k] - fwd[k] for k in vp_s}
        return {"seconds": vp_s, "forward": fwd, "backward": marginal, "per_epoch": per_epoch(vp_s),
                "backward_per_epoch": per_epoch(marginal), "forward_over_eval": ratio(fwd, results["eval"])}, fused

    model.eval()
    results["val_gradient"], g_val = timed(val_gradient_separate, args.repeats)
    results["val_pass"], fused = split_val_pass(None)
    results["val_pass"]["max_gradient_difference"] = max(float((fused.gradient[k] - g_val[k]).abs().max())
                                                         for k in theta)
    # The validation gradient from a seeded subset of the set (autosimulate's gradient_validation),
    # the scores still from all of it; subsets drawn as a run draws them, one per iteration.
    subset_sizes = [n for n in args.gradient_validation if n < len(val)]
    subsets = {n: [torch.randperm(len(val), generator=torch.Generator().manual_seed(i))[:n].sort().values
                   for i in range(args.subsets)] for n in subset_sizes}
    results["val_pass_subset"], subset_gradients = {}, {}
    for n in subset_sizes:
        results["val_pass_subset"][str(n)], _ = split_val_pass(subsets[n][0])
        subset_gradients[n] = [val_pass(rows).gradient for rows in subsets[n]]

    fb_s, _ = timed(lambda: loss_gradient(mean_loss, theta), args.repeats)
    results["hvp"] = {"forward_backward": fb_s}
    for mode in HVP_MODES:
        hvp_s, _ = timed(lambda mode=mode: default_hvp(mean_loss, theta, g_val, mode=mode), args.repeats)
        results["hvp"][mode] = {"seconds": hvp_s, "per_epoch": per_epoch(hvp_s),
                                "over_forward_backward": ratio(hvp_s, fb_s)}

    shared = hvp_operator(mean_loss, theta)
    shared(g_val)
    shared_s, _ = timed(lambda: shared(g_val), args.repeats)
    results["hvp"]["shared_graph"] = {"seconds": shared_s, "per_epoch": per_epoch(shared_s),
                                      "over_forward_backward": ratio(shared_s, fb_s)}

    def outputs_of(th: Params, part: Batch = train) -> torch.Tensor:
        return functional_call(model, {**fixed, **th}, (part.inputs,))

    def mean_output_loss(out: torch.Tensor, part: Batch = train) -> torch.Tensor:
        return losses(out, part.targets).mean()

    ggn_first_s, _ = timed(lambda: ggn_operator(outputs_of, mean_output_loss, theta)(g_val), args.repeats)
    ggn_shared = ggn_operator(outputs_of, mean_output_loss, theta)
    ggn_shared(g_val)
    ggn_further_s, _ = timed(lambda: ggn_shared(g_val), args.repeats)
    results["hvp"]["gauss-newton"] = {"first": ggn_first_s, "further": ggn_further_s,
                                      "first_per_epoch": per_epoch(ggn_first_s),
                                      "further_per_epoch": per_epoch(ggn_further_s),
                                      "first_over_hessian_first": ratio(ggn_first_s,
                                                                         results["hvp"]["reverse-over-reverse"]["seconds"]),
                                      "further_over_hessian_further": ratio(ggn_further_s, shared_s)}

    def c_by_backward() -> torch.Tensor:
        out = []
        for k in range(len(train)):
            single = per_sample_of(train.select(slice(k, k + 1)))
            gk = loss_gradient(lambda th, f=single: f(th).sum(), theta)
            out.append(sum((gk[n] * g_val[n]).sum() for n in theta))
        return torch.stack(out)

    results["c_k"] = {}
    c_of: dict[str, torch.Tensor] = {}
    ck_timings = interleaved({method: (lambda method=method: (directional_derivatives(per_sample, theta, g_val,
                                                                                       method=method),
                                                              {"wall": 0.0, "cpu": 0.0}))
                              for method in CK_METHODS}, args.repeats)
    for method, (ck_s, c_of[method]) in ck_timings.items():
        results["c_k"][method] = {"seconds": ck_s, "per_epoch": per_epoch(ck_s)}
    if args.backward_loop:
        loop_s, c_loop = timed(c_by_backward, 1)
        results["c_k"]["backward_loop"] = {"seconds": loop_s, "per_epoch": per_epoch(loop_s),
                                           "max_abs_difference_to_jvp": float((c_of["jvp"] - c_loop).abs().max())}
    error = (c_of["central-difference"] - c_of["jvp"]).abs()
    results["c_k"]["central-difference"]["error"] = {
        "max_abs": float(error.max()), "relative_to_max_abs_c": float(error.max() / c_of["jvp"].abs().max()),
        "relative_to_std_c": float(error.max() / c_of["jvp"].std()),
        "step": central_difference_step(theta, g_val)}

    space = ParameterSpace(light=Normal(mean=1.0, std=0.3, low=0.0), size=Bounded(low=0.2, high=0.8, mean=0.5),
                           shape=Categorical(choices=["sphere", "cube", "cylinder"]))
    psi = space.init_psi()
    latents = space.sample(psi, args.batch, torch.Generator().manual_seed(1))

    # The curvature subsets drawn as a run draws them (one per iteration), the first one timed.
    curvature_sizes = [n for n in args.curvature_scenes if n < len(train)]
    curvature_subsets = {n: [torch.randperm(len(train), generator=torch.Generator().manual_seed(100 + i))[:n]
                             .sort().values for i in range(args.subsets)] for n in curvature_sizes}

    def problem(mode: str, val_gradient: Callable[[], Params], shared_graph: bool, c_k: str = "jvp",
                check: bool = False, curvature_rows: torch.Tensor | None = None) -> HypergradProblem:
        part = train if curvature_rows is None else train.select(curvature_rows)
        part_losses = per_sample_of(part)

        def part_mean(th: Params) -> torch.Tensor:
            return part_losses(th).mean()

        hvp = hvp_operator(part_mean, theta, mode=mode) if shared_graph else (
            lambda v: default_hvp(part_mean, theta, v, mode=mode))
        return HypergradProblem(
            params=theta, train_losses=per_sample, hvp=hvp,
            val_gradient=val_gradient, log_prob=lambda: space.log_prob(psi, latents), psi=psi, c_k=c_k,
            check_c_k=check, ggn=ggn_operator(lambda th: outputs_of(th, part),
                                              lambda out: mean_output_loss(out, part), theta))

    estimators: dict[str, Callable[[HypergradProblem, str], Any]] = {
        "quadratic": lambda p, curvature: quadratic(p, damping=0.01, max_iter=args.cg_iters, tol=1e-4,
                                                    curvature=curvature),
        "approx-quadratic": lambda p, curvature: approx_quadratic(p, curvature=curvature),
        "linear": lambda p, curvature: linear(p),
        "no-val": lambda p, curvature: no_val(p),
    }
    hyper: dict[str, Any] = {}
    # Each configuration: (HVP mode, the validation gradient's rows: "separate", "all" or a subset
    # size, c_k, check, curvature, the curvature's scenes: None for all K or a subset size).
    # "separate": the validation gradient in a pass of its own,
    # forward-over-reverse HVPs, c_k by jvp; "before": the fused validation pass (its forward part
    # not counted: it is the evaluation the iteration does anyway), HVPs sharing one graph, c_k by
    # jvp; "after": the same with autosimulate's c_k = "auto" on the iterations it does not check
    # (central difference); "after_check": an iteration it checks (central difference and jvp);
    # "gradient_validation_N": "after" with the validation gradient from N images; "gauss_newton"
    # (quadratic and approx-quadratic): "after" with curvature = "gauss-newton", and
    # "gauss_newton_gradient_validation_N" with the first subset size as well; "curvature_N" and
    # "gauss_newton_curvature_N": "after" and "gauss_newton" with the curvature over N scenes.
    zero = {"wall": 0.0, "cpu": 0.0}
    Config = tuple[str, str | int, str, bool, str, int | None]
    configs: dict[str, Config] = {
        "separate": ("forward-over-reverse", "separate", "jvp", False, "hessian", None),
        "before": (DEFAULT_HVP_MODE, "all", "jvp", False, "hessian", None),
        "after": (DEFAULT_HVP_MODE, "all", "central-difference", False, "hessian", None),
        "after_check": (DEFAULT_HVP_MODE, "all", "central-difference", True, "hessian", None),
    }
    for n in subset_sizes:
        configs[f"gradient_validation_{n}"] = (DEFAULT_HVP_MODE, n, "central-difference", False, "hessian", None)
    configs["gauss_newton"] = (DEFAULT_HVP_MODE, "all", "central-difference", False, "gauss-newton", None)
    for n in subset_sizes[:1]:
        configs[f"gauss_newton_gradient_validation_{n}"] = (DEFAULT_HVP_MODE, n, "central-difference", False,
                                                            "gauss-newton", None)
    for n in curvature_sizes:
        configs[f"curvature_{n}"] = (DEFAULT_HVP_MODE, "all", "central-difference", False, "hessian", n)
        configs[f"gauss_newton_curvature_{n}"] = (DEFAULT_HVP_MODE, "all", "central-difference", False,
                                                  "gauss-newton", n)

    def applies(estimator: str, label: str) -> bool:
        if estimator == "no-val":
            return label in ("separate", "before")
        if estimator in ("quadratic", "approx-quadratic"):
            return True
        return configs[label][4] == "hessian" and configs[label][5] is None

    def one_hypergradient(fn: Callable[[HypergradProblem, str], Any], config: Config,
                          fused_pass: bool) -> tuple[Any, dict[str, float]]:
        """The estimate of one iteration: the validation pass (its forward part returned, to be left
        out) unless the gradient has a pass of its own, then the estimator."""
        mode, rows, c_k, check, curvature, scenes = config
        curvature_rows = None if scenes is None else curvature_subsets[scenes][0]
        if rows == "separate":
            return fn(problem(mode, val_gradient_separate, False, c_k, check), curvature), zero
        if not fused_pass:
            return fn(problem(mode, lambda: fused.gradient, True, c_k, check), curvature), zero
        gradient = val_pass(None if rows == "all" else subsets[int(rows)][0]).gradient
        forward = {"wall": sum(w for w, _ in forward_seconds), "cpu": sum(c for _, c in forward_seconds)}
        return fn(problem(mode, lambda: gradient, True, c_k, check, curvature_rows), curvature), forward

    # An epoch of a copy of the model in every round: the unit of this section's ratios, timed
    # beside what it divides.
    epoch_model = copy.deepcopy(model)
    epoch_optimizer = torch.optim.Adam([p for p in epoch_model.parameters() if p.requires_grad], lr=1e-3)

    def copy_epoch() -> tuple[None, dict[str, float]]:
        epoch_model.train()
        for minibatch in train.chunks(args.train_batch_size):
            core_defaults.train_step(model=epoch_model, batch=minibatch, optimizer=epoch_optimizer, loss_fn=losses)
        return None, zero

    section_epoch: list[dict[str, float]] = []
    for name, fn in estimators.items():
        labels = [label for label in configs if applies(name, label)]
        timings = interleaved({"epoch": copy_epoch, **{
            label: (lambda fn=fn, c=configs[label], fused_pass=name != "no-val": one_hypergradient(fn, c, fused_pass))
            for label in labels}}, args.repeats)
        section_epoch.append(timings["epoch"][0])
        hyper[name] = {}
        for label in labels:
            mode, _, method, check, curvature, scenes = configs[label]
            seconds, estimate = timings[label]
            hyper[name][label] = {
                "hvp": mode, "curvature": curvature, "curvature_scenes": scenes, "c_k": method, "c_k_checked": check,
                "seconds": seconds,
                "per_epoch": per_epoch(seconds), "per_interleaved_epoch": ratio(seconds, timings["epoch"][0]),
                "diagnostics": {k: v for k, v in estimate.diagnostics.items()
                                if k in ("cg_iterations", "negative_curvature", "cg_residual", "c_k_error_over_se")}}
        if name == "no-val":
            continue
        # What the approximations do to the estimate, in units of its own standard error: the central
        # difference (against the jvp, same theta and scenes), the subsets (against the whole set's
        # gradient; one subset per seed), and the cosine with the whole set's hypergradient.
        full = fn(problem(DEFAULT_HVP_MODE, lambda: fused.gradient, True), "hessian")
        effect: dict[str, Any] = {"stderr_norm": tree_norm(full.stderr), "grad_norm": tree_norm(full.grad),
                                  "c_k_error_over_se": hyper[name]["after_check"]["diagnostics"]["c_k_error_over_se"]}
        for n in subset_sizes:
            shifts, cosines = [], []
            for g_sub in subset_gradients[n]:
                sub = fn(problem(DEFAULT_HVP_MODE, lambda g_sub=g_sub: g_sub, True), "hessian")
                shifts.append(error_over_stderr(sub.grad, full.grad, full.stderr))
                cosines.append(float(tree_dot(sub.grad, full.grad)) / (tree_norm(sub.grad) * tree_norm(full.grad)))
            effect[f"gradient_validation_{n}"] = {
                "shift_over_se": {"median": statistics.median(shifts), "max": max(shifts)},
                "cosine_to_whole_set": {"median": statistics.median(cosines), "min": min(cosines)}}
        # The curvature over subsets of the scenes, against the curvature over all K (same gradient).
        for curvature in ("hessian", "gauss-newton") if name in ("quadratic", "approx-quadratic") else ():
            whole = full if curvature == "hessian" else fn(problem(DEFAULT_HVP_MODE, lambda: fused.gradient, True),
                                                         curvature)
            if curvature == "gauss-newton":
                # the Gauss-Newton estimate against the exact one (a different estimator, not noise)
                effect["gauss_newton"] = {
                    "against": "hessian", "shift_over_se": error_over_stderr(whole.grad, full.grad, full.stderr),
                    "cosine_to_hessian": float(tree_dot(whole.grad, full.grad))
                    / (tree_norm(whole.grad) * tree_norm(full.grad))}
            prefix = "curvature" if curvature == "hessian" else "gauss_newton_curvature"
            for n in curvature_sizes:
                shifts, cosines = [], []
                for rows_k in curvature_subsets[n]:
                    sub = fn(problem(DEFAULT_HVP_MODE, lambda: fused.gradient, True, curvature_rows=rows_k), curvature)
                    shifts.append(error_over_stderr(sub.grad, whole.grad, whole.stderr))
                    cosines.append(float(tree_dot(sub.grad, whole.grad))
                                   / (tree_norm(sub.grad) * tree_norm(whole.grad)))
                effect[f"{prefix}_{n}"] = {
                    "against": "hessian" if curvature == "hessian" else "gauss_newton",
                    "shift_over_se": {"median": statistics.median(shifts), "max": max(shifts)},
                    "cosine_to_all_scenes": {"median": statistics.median(cosines), "min": min(cosines)}}
        hyper[name]["effect"] = effect
    results["val_gradient_subsets"] = {
        str(n): {"cosine_to_whole_set": [float(tree_dot(g, fused.gradient)) / (tree_norm(g) * tree_norm(fused.gradient))
                                         for g in subset_gradients[n]]} for n in subset_sizes}
    results["hypergrad"] = hyper
    results["hypergrad_epochs"] = section_epoch
    results["defaults"] = {"hvp": DEFAULT_HVP_MODE, "c_k": AutoSimulateSettings().c_k,
                           "gradient_validation": AutoSimulateSettings().gradient_validation,
                           "curvature_scenes": AutoSimulateSettings().curvature_scenes}
    if args.run_iterations:
        results["run"] = {name: short_run(args, name, settings) for name in ("linear", "approx-quadratic")}

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
