"""The warning when the hypergradient stays below its standard error: the counter on made-up
norms, score-function estimates whose expectation is known to be zero (flagged) or far from it
(not flagged), and the progress line."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from rich.console import Console

from autosim_core.hypergrad import score_function_terms
from autosim_core.noise_watch import NoiseWatch, below_noise_warning
from autosim_core.observers import ConsoleProgress
from autosim_core.space import Normal, ParameterSpace


def test_the_warning_comes_after_patience_iterations_in_a_row_and_a_good_one_resets_it() -> None:
    watch = NoiseWatch(3)
    seen = [watch.update(g, 1.0, 0.5, 0.6) for g in (0.5, 0.5, 2.0, 0.5, 0.5, 0.5, 0.4)]
    assert [w is not None for w in seen] == [False, False, False, False, False, True, True]
    assert "for 4 iterations" in seen[-1]
    assert NoiseWatch(0).update(0.1, 1.0, 0.5, 0.6) is None  # off
    assert NoiseWatch(1).update(0.1, None, 0.5, 0.6) is None  # no standard error, no claim


def test_the_cause_names_memorised_renders_when_the_training_loss_is_far_below_validation() -> None:
    memorised = below_noise_warning(5, 0.24, 0.38, 1e-4, 0.9)
    assert "memorised" in memorised and "[training].epochs" in memorised
    noisy = below_noise_warning(5, 0.24, 0.38, 0.5, 0.6)
    assert "memorised" not in noisy and "scenes_per_iteration" in noisy


def _watch_score_function(values_of, iterations: int = 30, k: int = 64) -> list[str | None]:
    """The watch over score-function estimates of d/dpsi E[f(s)], s ~ N(loc, std), from K scenes
    an iteration (the estimators' own ``score_function_terms``)."""
    space = ParameterSpace(s=Normal(mean=0.0, std=1.0))
    psi = space.init_psi()
    gen = torch.Generator().manual_seed(0)
    watch = NoiseWatch(3)
    out = []
    for _ in range(iterations):
        latents = space.sample(psi, k, gen)
        values = values_of(latents["s"][:, 0], gen)
        est = score_function_terms(values, space.log_prob(psi, latents), psi, baseline="loo")
        norm = float(sum((g**2).sum() for g in est.grad.values()).sqrt())
        se = float(sum((e**2).sum() for e in est.stderr().values()).sqrt())
        out.append(watch.update(norm, se, 0.5, 0.6))
    return out


def test_pure_noise_is_flagged_and_a_real_gradient_is_not() -> None:
    # f independent of the scene: E[(f - b) grad log q] = 0 exactly, the estimate is all noise
    noise = _watch_score_function(lambda s, gen: torch.randn(len(s), generator=gen))
    assert any(w is not None for w in noise)
    # f = s: d/dloc E[s] = 1, many standard errors (about sqrt(2 / K)) from zero at K = 64
    signal = _watch_score_function(lambda s, gen: s)
    assert all(w is None for w in signal)


def test_the_progress_line_prints_the_warning() -> None:
    console = Console(record=True, width=200)
    observer = ConsoleProgress(console=console)
    row = {"iteration": 7, "images": 224, "seconds": 1.0, "val_loss": 0.5, "val_metric": 0.8,
           "warning": below_noise_warning(5, 0.24, 0.38, 1e-4, 0.9)}
    observer.on_iteration(run=SimpleNamespace(), row=row)
    text = console.export_text()
    assert "warning: the hypergradient has stayed below its standard error" in text
    assert "[training].epochs" in text  # printed as text, not read as markup
