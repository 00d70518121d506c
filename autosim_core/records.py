"""The plain records that pass between simulator, task and core."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass
class Example:
    """One rendered training example.

    image:   the rendered observation; images are float tensors (C, H, W) in [0, 1], but any
             tensor the task's ``collate`` understands is allowed (the toy task uses a 2-vector).
    mask:    per-pixel class ids (H, W), int64, 0 = background (segmentation).
    label:   one class id for the whole example (classification).
    target:  a regression target for the whole example: a float tensor, a scalar (shape ())
             or a vector (pose, depth, a count), whatever the task's ``collate`` stacks.
    objects: per-object records for export and detection, e.g.
             ``{"category": "cube", "box": [x0, y0, x1, y1], "colour": "red"}`` (box in pixels).
    scene:   the scene record it was rendered from.
    """

    image: torch.Tensor
    mask: torch.Tensor | None = None
    label: int | None = None
    target: torch.Tensor | None = None
    objects: list[dict[str, Any]] = field(default_factory=list)
    scene: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Tensors, lists and scalars only, so ``torch.load(weights_only=True)`` reads it back."""
        return {"image": self.image, "mask": self.mask, "label": self.label, "target": self.target,
                "objects": self.objects, "scene": self.scene}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Example:
        """The inverse of ``to_dict``; dicts written before a field existed get its default."""
        return cls(**data)


@dataclass
class Batch:
    """Examples collated by a task: ``inputs`` for the model, ``targets`` for its loss.

    ``targets`` is a tensor (or a list) whose first dimension matches ``inputs``.
    """

    inputs: torch.Tensor
    targets: Any

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def select(self, index: torch.Tensor | slice) -> Batch:
        if isinstance(self.targets, list):
            if isinstance(index, slice):
                targets = self.targets[index]
            else:
                targets = [self.targets[int(i)] for i in index]
        else:
            targets = self.targets[index]
        return Batch(self.inputs[index], targets)

    def chunks(self, size: int) -> list[Batch]:
        return [self.select(slice(i, i + size)) for i in range(0, len(self), size)]

    def to(self, device: torch.device | str) -> Batch:
        """The batch on ``device``: its inputs, and its targets when they are a tensor."""
        import torch

        targets = self.targets.to(device) if isinstance(self.targets, torch.Tensor) else self.targets
        return Batch(self.inputs.to(device), targets)


@dataclass
class SceneBatch:
    """Scenes sampled from q_psi: latents for scoring, records for rendering.

    ``latents`` is whatever the matching ``log_prob`` needs (the core's default: one tensor of
    shape (n, repeat) per parameter). Each record carries the parameter values plus ``id``
    (unique within a run) and ``seed`` (for the renderer's own noise, so that a scene renders
    the same image every time).
    """

    latents: dict[str, torch.Tensor]
    records: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.records)
