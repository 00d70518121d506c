"""The fast backend's differentiable render (``render_differentiable``): the same images as
``render``, with gradients to the lights' strengths that a finite difference of ``render``
itself confirms.

Each sample of the fast backend picks one lamp in proportion to the lamps' strengths, so moving
one lamp alone changes which lamp some samples pick: a step of the image, not a slope. The
finite differences therefore move the strengths along directions that keep the picks: the
ambient light alone (it takes no part in the pick), all lamps scaled together (the pick
probabilities are ratios), or one lamp with the others off (it is always picked). In general
the gradient holds the pick probabilities fixed (``fast._prepare``): it is the derivative of the
expected image, not of the steps a moved pick makes in one rendering of it.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from autosim_clevr.contact_sheet import sample_records
from autosim_clevr.fast import DIFFERENTIABLE
from autosim_clevr.params import ClevrSettings
from autosim_clevr.plugin import clevr_simulator

SMALL = ClevrSettings(output_size=(24, 32), max_samples=2)


def records(n: int = 3, **changes: float) -> list[dict[str, Any]]:
    recs = sample_records("target", n, 5)
    sizes = ["64x64", "120x80", "64x64"]
    for i, r in enumerate(recs):
        r["image_size"] = sizes[i % len(sizes)]
        r["samples"] = 2
        r.update(changes)
    return recs


def values_of(recs: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {name: torch.tensor([[float(r[name])] for r in recs], requires_grad=True) for name in DIFFERENTIABLE}


def weighted(images: list[torch.Tensor], weights: list[torch.Tensor]) -> torch.Tensor:
    """A scalar of the images that every pixel counts in, as a task's loss would."""
    return sum((img.double() * w).sum() for img, w in zip(images, weights, strict=True))  # type: ignore[return-value]


def render_plain(recs: list[dict[str, Any]]) -> list[torch.Tensor]:
    return [e.image for e in clevr_simulator.render(scenes=recs, settings=SMALL)]


def gradient_and_fd(recs: list[dict[str, Any]], direction: dict[str, float], h: float = 1e-3
                    ) -> tuple[float, float]:
    """(directional derivative of the weighted images by autograd, the same by a central
    difference of ``render``) along ``direction`` (relative changes of the named strengths)."""
    gen = torch.Generator().manual_seed(0)
    weights = [torch.rand((3, *SMALL.output_size), generator=gen, dtype=torch.float64) - 0.5 for _ in recs]
    values = values_of(recs)
    examples = clevr_simulator.render_differentiable(scenes=recs, values=values, settings=SMALL)
    grads = torch.autograd.grad(weighted([e.image for e in examples], weights), list(values.values()))
    analytic = sum(float((g[:, 0].double() * torch.tensor([float(r[name]) for r in recs], dtype=torch.float64)
                          ).sum()) * direction.get(name, 0.0)
                   for name, g in zip(values, grads, strict=True))

    def moved(sign: float) -> float:
        recs_moved = [{**r, **{n: float(r[n]) * (1 + sign * h * d) for n, d in direction.items()}} for r in recs]
        return float(weighted(render_plain(recs_moved), weights))

    return analytic, (moved(1.0) - moved(-1.0)) / (2 * h)


def test_the_differentiable_render_gives_the_same_images_as_render() -> None:
    recs = records()
    plain = render_plain(recs)
    examples = clevr_simulator.render_differentiable(scenes=recs, values=values_of(recs), settings=SMALL)
    assert len(examples) == len(recs)
    for img, ex in zip(plain, examples, strict=True):
        assert ex.image.requires_grad
        torch.testing.assert_close(ex.image.detach(), img, atol=2e-6, rtol=0)


@pytest.mark.parametrize(("changes", "direction"), [
    ({}, {"ambient": 1.0}),
    ({}, {"key_light": 1.0, "fill_light": 1.0, "back_light": 1.0}),
    ({"fill_light": 0.0, "back_light": 0.0}, {"key_light": 1.0}),
    ({"key_light": 0.0, "back_light": 0.0, "ambient": 0.3}, {"fill_light": 1.0}),
    ({"key_light": 0.0, "fill_light": 0.0}, {"back_light": 1.0, "ambient": -0.5}),
], ids=["ambient", "all-lamps", "key", "fill", "back"])
def test_the_gradient_matches_a_finite_difference_of_render(changes: dict[str, float],
                                                           direction: dict[str, float]) -> None:
    analytic, fd = gradient_and_fd(records(**changes), direction)
    assert abs(fd) > 1e-2  # the direction changes the images
    # saturated pixels (clipped at 1) are kinks, which a central difference sees at O(h)
    assert analytic == pytest.approx(fd, rel=5e-3)


def test_only_the_fast_backend_declares_differentiable_parameters() -> None:
    assert clevr_simulator.differentiable_parameters(settings=SMALL) == list(DIFFERENTIABLE)
    assert clevr_simulator.differentiable_parameters(settings=ClevrSettings(backend="cycles")) is None
