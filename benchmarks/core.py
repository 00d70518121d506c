"""Core benchmarks: the cost of the hypergradient's pieces on a small MLP, and a toy run's
seconds per phase. Writes JSON (``--out``); ratios are measured within one process."""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.func import functional_call

from autosim_core.config import parse_config
from autosim_core.hypergrad import conjugate_gradient, default_hvp, directional_derivatives, ggn_operator, hvp_operator
from autosim_core.run import Run


def best_of(fn: Callable[[], object], repeat: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def pieces(k: int, width: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, width), torch.nn.Tanh(), torch.nn.Linear(width, 10))
    x, y = torch.randn(k, 32), torch.randint(0, 10, (k,))
    theta = {n: p.detach() for n, p in model.named_parameters()}

    def per_sample(th: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(functional_call(model, th, (x,)), y, reduction="none")

    def mean_loss(th: dict[str, torch.Tensor]) -> torch.Tensor:
        return per_sample(th).mean()

    v = {n: torch.randn_like(p) for n, p in theta.items()}

    def forward_backward() -> None:
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()

    def k_backward() -> None:
        for i in range(k):
            model.zero_grad()
            torch.nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()

    fb = best_of(forward_backward)
    hvp = best_of(lambda: default_hvp(mean_loss, theta, v))
    jvp = best_of(lambda: directional_derivatives(per_sample, theta, v))
    loop = best_of(k_backward, repeat=2)
    cg = best_of(lambda: conjugate_gradient(lambda u: default_hvp(mean_loss, theta, u), v, damping=0.01,
                                            max_iter=10, tol=1e-12), repeat=2)

    def outputs(th: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(model, th, (x,))

    def output_loss(out: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(out, y)

    # One product on a fresh operator (what approx-quadratic pays), and 10 on one operator (CG's products).
    ggn_one = best_of(lambda: ggn_operator(outputs, output_loss, theta)(v))
    hvp_one = best_of(lambda: hvp_operator(mean_loss, theta)(v))

    def ten(make: Callable[[], Callable[[dict[str, torch.Tensor]], object]]) -> None:
        product = make()
        for _ in range(10):
            product(v)

    ggn_ten = best_of(lambda: ten(lambda: ggn_operator(outputs, output_loss, theta)), repeat=2)
    hvp_ten = best_of(lambda: ten(lambda: hvp_operator(mean_loss, theta)), repeat=2)
    return {"K": k, "width": width, "seconds_forward_backward": fb, "seconds_hvp": hvp,
            "hvp_over_forward_backward": hvp / fb, "seconds_ck_one_jvp": jvp, "seconds_ck_k_backward": loop,
            "ck_k_backward_over_one_jvp": loop / jvp, "seconds_cg_10_iterations": cg,
            "seconds_ggn_one_product": ggn_one, "seconds_hvp_operator_one_product": hvp_one,
            "ggn_over_hvp_one_product": ggn_one / hvp_one, "seconds_ggn_10_products": ggn_ten,
            "seconds_hvp_10_products": hvp_ten, "ggn_over_hvp_10_products": ggn_ten / hvp_ten}


def toy_run(estimator: str) -> dict[str, float]:
    config = parse_config({
        "seed": 0, "simulator": {"name": "toy-gaussians", "start": "initial"}, "task": {"name": "toy-logistic"},
        "searcher": {"name": "autosimulate", "settings": {"scenes_per_iteration": 64, "lr": 0.1}},
        "estimator": {"name": estimator}, "training": {"epochs": 5, "batch_size": 32, "lr": 0.05},
        "budget": {"iterations": 20}, "validation": {"count": 500, "seed": 1001},
    })
    with tempfile.TemporaryDirectory() as tmp:
        config.cache_dir = Path(tmp) / "cache"
        summary = Run(config, Path(tmp) / "run").execute()
    phases = sum(summary["seconds_split"].values())
    return {"seconds": summary["seconds"], **{f"seconds_{k}": v for k, v in summary["seconds_split"].items()},
            "overhead_fraction": (summary["seconds"] - phases) / summary["seconds"],
            "val_metric": summary["val"]["metric"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    result = {
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()},
        "mlp": [pieces(64, 64), pieces(256, 256)],
        "toy_run": {name: toy_run(name) for name in ("quadratic", "approx-quadratic", "linear", "no-val")},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
