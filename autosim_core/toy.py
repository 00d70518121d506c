"""A toy simulator and task, small enough for tests and the plugin guide.

The simulator draws labelled 2-D points: a label from a Bernoulli, then a point from that
class's Gaussian, whose mean and spread are psi. The task is logistic regression (or a small
MLP) classifying the points. The space starts class 1 at (0, 0.5), overlapping class 0 at
(-1, 0); the ``target`` preset moves it to (3, 0). A classifier trained on the initial data
draws its boundary in the wrong place, so the validation loss points towards the target; and
the target's data are also the easier ones, so ``no-val`` (which lowers the model's own loss)
moves the same way at first, though it does not stop there.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel

from .builtin_settings import ToySimulatorSettings, ToyTaskSettings
from .hookspecs import hookimpl
from .records import Batch, Example
from .space import Bernoulli, Normal, ParameterSpace


def toy_space() -> ParameterSpace:
    return ParameterSpace(
        label=Bernoulli(p=0.5, learn=False),
        x0=Normal(mean=-1.0, std=0.7, learn=False),
        y0=Normal(mean=0.0, std=0.7, learn=False),
        x1=Normal(mean=0.0, std=0.7, low=-5, high=5),
        y1=Normal(mean=0.5, std=0.7, low=-5, high=5),
    )


class ToySimulator:
    @hookimpl
    def simulator_settings_model(self) -> type[BaseModel]:
        return ToySimulatorSettings

    @hookimpl
    def labels(self) -> list[str]:
        """The two classes of the points; ``Example.label`` is 0 or 1."""
        return ["class0", "class1"]

    @hookimpl
    def parameter_space(self) -> ParameterSpace:
        return toy_space()

    @hookimpl
    def presets(self) -> dict[str, dict[str, dict[str, Any]]]:
        return {"target": {"x1": {"mean": 3.0}, "y1": {"mean": 0.0}}, "initial": {}}

    @hookimpl
    def render(self, scenes: list[dict[str, Any]]) -> list[Example]:
        out = []
        for scene in scenes:
            c = int(scene["label"])
            point = torch.tensor([scene[f"x{c}"], scene[f"y{c}"]], dtype=torch.float32)
            out.append(Example(image=point, label=c, scene=scene))
        return out


class ToyTask:
    @hookimpl
    def task_settings_model(self) -> type[BaseModel]:
        return ToyTaskSettings

    @hookimpl
    def create_model(self, settings: ToyTaskSettings) -> torch.nn.Module:
        if settings.hidden == 0:
            return torch.nn.Linear(2, 2)
        return torch.nn.Sequential(torch.nn.Linear(2, settings.hidden), torch.nn.Tanh(),
                                   torch.nn.Linear(settings.hidden, 2))

    @hookimpl
    def collate(self, examples: list[Example]) -> Batch:
        inputs = torch.stack([e.image for e in examples])
        labels = torch.tensor([e.label for e in examples], dtype=torch.long)
        return Batch(inputs, labels)

    @hookimpl
    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(outputs, targets, reduction="none")

    @hookimpl
    def evaluate(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        return {"metric": float((outputs.argmax(-1) == targets).float().mean())}


toy_simulator = ToySimulator()
toy_task = ToyTask()
