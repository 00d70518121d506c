"""How noisy is the hypergradient? ``autosim diagnose CONFIG``.

At a fixed theta and psi (after a few warm-up iterations of the config's AutoSimulate run),
the K-scene hypergradient of each estimator and each variance-reduction option is compared
with a reference from many more scenes at the same theta and psi: cosine similarity and
relative error over several independent draws, the seconds each option costs, and from the
reference's per-scene terms the signal-to-noise ratio |mean| / standard error of every psi
coordinate.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .config import ConfigError, RunConfig, validate_settings
from .contracts import Hypergrad, HypergradProblem
from .hypergrad import Baseline, Params
from .pathwise import pathwise_keys
from .plugins import Registry, has_impl, load_registry, plugin_manager
from .records import Batch, SceneBatch
from .run import Run
from .searchers import AutoSimulate, Rendered, hypergrad_problem, pathwise_for, sobol_sampler


@dataclass(frozen=True)
class Option:
    """A way of forming the K-scene estimate."""

    name: str
    baseline: Baseline
    sampling: str = "iid"
    reuse: bool = False
    pathwise: bool = False


OPTIONS = {
    "mean": Option("mean", "mean"),
    "loo": Option("loo", "loo"),
    "sobol": Option("sobol", "none", "sobol"),
    "reuse": Option("reuse", "loo", reuse=True),
    "sobol+reuse": Option("sobol+reuse", "none", "sobol", reuse=True),
    "sobol+pathwise": Option("sobol+pathwise", "none", "sobol", pathwise=True),
    "sobol+reuse+pathwise": Option("sobol+reuse+pathwise", "none", "sobol", reuse=True, pathwise=True),
}
"""The ``+pathwise`` options replace the score function by the pathwise estimate on the
coordinates the simulator differentiates (``render_differentiable``) and need that hook."""
REFERENCE = Option("loo", "loo")
REFERENCE_PATHWISE = Option("loo+pathwise", "loo", pathwise=True)


def _flat(tree: Params, keys: list[str]) -> torch.Tensor:
    return torch.cat([tree[k].detach().double().reshape(-1) for k in keys])


def coordinate_names(psi: Params, keys: list[str]) -> list[str]:
    names = []
    for k in keys:
        n = psi[k].numel()
        names.extend([k] if psi[k].dim() == 0 else [f"{k}[{i}]" for i in range(n)])
    return names


def compare(g: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """Cosine similarity with the reference and relative error ||g - ref|| / ||ref||."""
    cos = float(g @ ref / (g.norm() * ref.norm()).clamp_min(1e-300))
    return cos, float((g - ref).norm() / ref.norm().clamp_min(1e-300))


def _stats(xs: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
            "min": min(xs), "max": max(xs)}


class _Scorer:
    """Builds the estimators' problem for a set of scenes at the fixed theta and psi, as the
    AutoSimulate searcher builds it (``hypergrad_problem``), with batches split into chunks."""

    def __init__(self, run: Run, chunk: int):
        self.run = run
        self.chunk = chunk
        assert run.model is not None
        self.model = run.model
        self.theta = run.theta(self.model)

    def problem(self, current: tuple[SceneBatch, Batch], reused: list[tuple[SceneBatch, Batch, torch.Tensor]],
                option: Option, clip: float) -> HypergradProblem:
        run, theta = self.run, self.theta
        scenes, batch = current
        chunks = batch.chunks(self.chunk)
        n = len(batch)

        def hvp(v: Params) -> Params:
            # by chunks, so that a reference batch of a thousand images fits in memory
            total = {k: torch.zeros_like(x) for k, x in theta.items()}
            for part in chunks:
                f = run.functional_losses(self.model, part)
                hv = run.pm.hook.hvp(loss_fn=lambda th, f=f: f(th).sum() / n, params=theta, vector=v)
                for k in total:
                    total[k] += hv[k]
            return total

        with torch.no_grad():
            log_q = run.log_prob(run.psi, scenes).detach()
        pool = [Rendered(scenes, batch, log_q), *(Rendered(s, b, lq) for s, b, lq in reused)]
        problem = hypergrad_problem(run, self.model, pool, baseline=option.baseline, reuse_clip=clip, hvp=hvp,
                                    chunk=self.chunk)
        if option.pathwise:
            problem.pathwise = pathwise_for(run, self.model, scenes, chunk=self.chunk)
        return problem


def _estimator(name: str, run: Run, registry: Registry) -> Callable[[HypergradProblem], Hypergrad]:
    """The installed estimator ``name`` (any plugin of the registry) with the run's settings
    where the run uses it, else its defaults."""
    try:
        plugin = registry.get("estimators", name)
    except LookupError as exc:
        raise ValueError(f"--estimator: {exc}") from None
    pm = plugin_manager(("estimator", plugin))
    if run.config.estimator.name == name:
        settings = run.est_settings
    else:
        try:
            settings = validate_settings(pm.hook.estimator_settings_model(), {}, "estimator.settings")
        except ConfigError as exc:
            raise ValueError(f"--estimator {name!r} has required settings; name it in the config: "
                             f"{'; '.join(exc.lines)}") from None
    return lambda problem: pm.hook.estimate_hypergrad(problem=problem, settings=settings)


def diagnose(config: RunConfig, *, warmup: int = 10, draws: int = 8, scenes: int | None = None,
             reference: int = 1024, estimators: tuple[str, ...] = ("linear",),
             options: tuple[str, ...] | None = None, reuse_iterations: int = 3, reuse_clip: float = 5.0,
             chunk: int = 128, progress: Callable[[str], None] | None = None,
             registry: Registry | None = None) -> dict[str, Any]:
    """Measure the hypergradient's noise for ``config``; returns the JSON-ready report. The
    estimators are looked up among the installed ones (``registry``, default: all installed).
    ``options`` default to all, the ``+pathwise`` ones where the simulator can differentiate."""
    say = progress or (lambda _: None)
    unknown = [o for o in options or () if o not in OPTIONS]
    if unknown:
        raise ValueError(f"unknown option {unknown[0]!r}; allowed: {', '.join(OPTIONS)}")
    registry = registry or load_registry()
    with tempfile.TemporaryDirectory() as tmp:
        run = Run(config, tmp, registry=registry)
    if not isinstance(run.searcher_settings, AutoSimulate.settings_model):
        raise ValueError("diagnose needs a config whose searcher is 'autosimulate'")
    problems = AutoSimulate.plugin_problems(run.searcher_settings.model_copy(update={"pathwise": True}), run.space,
                                            config.simulator.name, lambda hook: has_impl(run.pm, hook, "simulator"),
                                            run.differentiable_parameters)
    if options is None:
        options = tuple(o for o, opt in OPTIONS.items() if not (opt.pathwise and problems))
    elif problems and any(OPTIONS[o].pathwise for o in options):
        raise ValueError(f"the '+pathwise' options: {problems[0].split(': ', 1)[1]}")
    with_pathwise = any(OPTIONS[o].pathwise for o in options)
    k = scenes or run.searcher_settings.scenes_per_iteration
    run.val = run.load_data("validation")
    run.psi = run.space.init_psi()
    run.model = run.create_model()
    run.model_optimizer = run.create_model_optimizer(run.model)
    searcher = AutoSimulate(run, run.searcher_settings)
    history: list[dict[str, torch.Tensor]] = []
    iteration_seconds = []
    for i in range(1, warmup + 1):
        history.append({key: v.detach().clone() for key, v in run.psi.items()})
        run.iteration = i
        start = time.perf_counter()
        row = searcher.step(i)
        iteration_seconds.append(time.perf_counter() - start)
        say(f"warm-up {i}/{warmup}: val_metric {row.get('val_metric')}")
    assert run.model is not None
    run.model.eval()
    scorer = _Scorer(run, chunk)
    keys = list(run.space.learnable(run.psi))
    names = coordinate_names(run.psi, keys)
    # the pathwise coordinates' positions in the flattened gradient, where the options compare
    # the two estimators on the same coordinates
    pw_keys = pathwise_keys(run.space, run.psi, run.differentiable_parameters) if with_pathwise else []
    pw_names = coordinate_names(run.psi, pw_keys)
    subset = torch.tensor([names.index(n) for n in pw_names], dtype=torch.long)
    old_psis = list(reversed(history))[:reuse_iterations] if history else []
    gen = torch.Generator().manual_seed(config.seed + 7919)

    def render(n: int, psi: dict[str, torch.Tensor], sampling: str = "iid") -> tuple[SceneBatch, Batch, float]:
        start = time.perf_counter()
        scenes_, examples = run.render(run.space, psi, n, gen, list(range(n)),
                                       sobol_sampler if sampling == "sobol" else None)
        batch = run.collate(examples)
        return scenes_, batch, time.perf_counter() - start

    say(f"reference: rendering {reference} scenes")
    ref_scenes, ref_batch, _ = render(reference, run.psi)
    report: dict[str, Any] = {
        "config": {"simulator": config.simulator.name, "task": config.task.name, "seed": config.seed},
        "warmup": warmup, "draws": draws, "scenes": k, "reference": reference,
        "reuse_iterations": reuse_iterations, "reuse_clip": reuse_clip,
        "coordinates": names, "iteration_seconds": statistics.fmean(iteration_seconds) if iteration_seconds else None,
        "pathwise_coordinates": pw_names, "estimators": {},
    }
    for est_name in estimators:
        estimate = _estimator(est_name, run, registry)
        say(f"{est_name}: reference estimate")
        start = time.perf_counter()
        ref = estimate(scorer.problem((ref_scenes, ref_batch), [], REFERENCE, reuse_clip))
        ref_seconds = time.perf_counter() - start
        g_ref = _flat(ref.grad, keys)
        assert ref.stderr is not None
        se_ref = _flat(ref.stderr, keys)
        snr = (g_ref.abs() / se_ref.clamp_min(1e-300)).tolist()
        entry: dict[str, Any] = {
            "reference": {"grad": g_ref.tolist(), "stderr": se_ref.tolist(), "snr": snr,
                          "relative_stderr": float(se_ref.norm() / g_ref.norm()), "seconds": ref_seconds,
                          "snr_above_2": sum(s > 2 for s in snr), "snr_median": statistics.median(snr),
                          "snr_at_k": [s * math.sqrt(k / reference) for s in snr]},
            "options": {},
        }
        g_ref_pw = None
        if with_pathwise:
            say(f"{est_name}: pathwise reference estimate")
            start = time.perf_counter()
            ref_pw = estimate(scorer.problem((ref_scenes, ref_batch), [], REFERENCE_PATHWISE, reuse_clip))
            assert ref_pw.stderr is not None
            g_ref_pw, se_ref_pw = _flat(ref_pw.grad, keys), _flat(ref_pw.stderr, keys)
            gap = (g_ref_pw - g_ref)[subset] / (se_ref_pw[subset] ** 2 + se_ref[subset] ** 2).sqrt().clamp_min(1e-300)
            entry["reference_pathwise"] = {
                "grad": g_ref_pw.tolist(), "stderr": se_ref_pw.tolist(), "seconds": time.perf_counter() - start,
                "relative_stderr": float(se_ref_pw[subset].norm() / g_ref_pw[subset].norm()),
                "score_relative_stderr": float(se_ref[subset].norm() / g_ref[subset].norm()),
                "z_against_score": gap.tolist(), "cosine_with_score": compare(g_ref_pw[subset], g_ref[subset])[0]}
        results: dict[str, dict[str, list[float]]] = {
            o: {"cos": [], "err": [], "seconds": [], "render": [], "cos_pw": [], "err_pw": [], "cos_pw_ref": [],
                "err_pw_ref": []} for o in options}
        for d in range(draws):
            fresh = {s: render(k, run.psi, s) for s in {OPTIONS[o].sampling for o in options}}
            old = [render(k, p) for p in old_psis] if any(OPTIONS[o].reuse for o in options) else []
            with torch.no_grad():
                old_reused = [(s, b, run.log_prob(p, s).detach())
                              for (s, b, _), p in zip(old, old_psis if old else [], strict=True)]
            for o in options:
                opt = OPTIONS[o]
                scenes_, batch, render_s = fresh[opt.sampling]
                start = time.perf_counter()
                est = estimate(scorer.problem((scenes_, batch), old_reused if opt.reuse else [], opt, reuse_clip))
                seconds = time.perf_counter() - start
                g = _flat(est.grad, keys)
                cos, err = compare(g, g_ref)
                r = results[o]
                r["cos"].append(cos)
                r["err"].append(err)
                if g_ref_pw is not None:
                    for name, ref_ in (("pw", g_ref), ("pw_ref", g_ref_pw)):
                        c_, e_ = compare(g[subset], ref_[subset])
                        r[f"cos_{name}"].append(c_)
                        r[f"err_{name}"].append(e_)
                r["seconds"].append(seconds)
                r["render"].append(render_s)
            say(f"{est_name}: draw {d + 1}/{draws}")
        for o, r in results.items():
            entry["options"][o] = {"cosine": _stats(r["cos"]), "relative_error": _stats(r["err"]),
                                   "seconds": statistics.fmean(r["seconds"]),
                                   "render_seconds": statistics.fmean(r["render"]),
                                   "scenes_scored": k * (1 + (len(old_psis) if OPTIONS[o].reuse else 0))}
            if g_ref_pw is not None:
                # on the pathwise coordinates only, against each reference
                entry["options"][o]["pathwise_coordinates"] = {
                    "cosine": _stats(r["cos_pw"]), "relative_error": _stats(r["err_pw"]),
                    "cosine_pathwise_reference": _stats(r["cos_pw_ref"]),
                    "relative_error_pathwise_reference": _stats(r["err_pw_ref"])}
        report["estimators"][est_name] = entry
    return report


def markdown(report: dict[str, Any]) -> str:
    """The report as tables: options per estimator, then the reference's signal-to-noise."""
    k, ref = report["scenes"], report["reference"]
    lines = [f"K = {k} scenes per estimate vs a K = {ref} reference, {report['draws']} draws, "
             f"theta and psi after {report['warmup']} warm-up iterations "
             f"({report['iteration_seconds'] or 0:.1f} s per iteration).", "",
             "| estimator | option | scenes scored | cosine mean (min … max) | relative error mean ± sd "
             "| seconds (estimate + render) |",
             "|---|---|---|---|---|---|"]
    for est, entry in report["estimators"].items():
        for o, r in entry["options"].items():
            c, e = r["cosine"], r["relative_error"]
            lines.append(f"| {est} | {o} | {r['scenes_scored']} | {c['mean']:.2f} ({c['min']:.2f} … {c['max']:.2f}) "
                         f"| {e['mean']:.2f} ± {e['std']:.2f} | {r['seconds']:.2f} + {r['render_seconds']:.2f} |")
    lines += ["", "| estimator | reference relative s.e. | coordinates with SNR > 2 | median SNR (K = "
              f"{ref}) | best SNR at K = {k} |", "|---|---|---|---|---|"]
    for est, entry in report["estimators"].items():
        r = entry["reference"]
        lines.append(f"| {est} | {r['relative_stderr']:.2f} | {r['snr_above_2']} of {len(r['snr'])} "
                     f"| {r['snr_median']:.2f} | {max(r['snr_at_k']):.2f} |")
    if report.get("pathwise_coordinates"):
        lines += ["", f"On the {len(report['pathwise_coordinates'])} coordinates the simulator differentiates, "
                  "against the score-function reference and the pathwise one (same reference scenes):", "",
                  "| estimator | option | cosine, score ref. | rel. error, score ref. | cosine, pathwise ref. "
                  "| rel. error, pathwise ref. |", "|---|---|---|---|---|---|"]
        for est, entry in report["estimators"].items():
            for o, r in entry["options"].items():
                p = r["pathwise_coordinates"]
                lines.append(f"| {est} | {o} | {p['cosine']['mean']:.2f} | {p['relative_error']['mean']:.2f} "
                             f"| {p['cosine_pathwise_reference']['mean']:.2f} "
                             f"| {p['relative_error_pathwise_reference']['mean']:.2f} |")
        for est, entry in report["estimators"].items():
            pw = entry["reference_pathwise"]
            lines.append(f"\n{est}: reference relative s.e. on these coordinates {pw['score_relative_stderr']:.2f} "
                         f"(score function), {pw['relative_stderr']:.2f} (pathwise); the two references' cosine "
                         f"{pw['cosine_with_score']:.2f}, largest |z| of their difference "
                         f"{max(abs(z) for z in pw['z_against_score']):.1f}.")
    return "\n".join(lines) + "\n"
