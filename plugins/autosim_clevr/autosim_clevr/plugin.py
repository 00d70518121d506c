"""The ``clevr`` simulator's hooks: records → 3-D scenes → a backend → training examples."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from autosim_core import Example, ParameterSpace, hookimpl
from pydantic import BaseModel

from .geometry import projected_box
from .layout import layout
from .params import ClevrSettings, clevr_presets, clevr_space
from .scene import CLASS_ID, SHAPES, Scene3D

Backend = Callable[[list[Scene3D]], list[tuple[torch.Tensor, torch.Tensor]]]


class SceneRenderError(RuntimeError):
    """A scene could not be laid out or rendered; ``scene_id`` says which."""

    def __init__(self, scene_id: Any, reason: BaseException | str) -> None:
        super().__init__(f"clevr scene {scene_id!r} failed: {reason}")
        self.scene_id = scene_id


def as_settings(settings: Any) -> ClevrSettings:
    if isinstance(settings, ClevrSettings):
        return settings
    return ClevrSettings(**(settings or {}))


def backend_for(settings: ClevrSettings) -> Backend:
    """The render function of the chosen backend; Cycles is imported only when asked for."""
    if settings.backend == "cycles":
        try:
            from .cycles import render_batch as cycles_render
        except ImportError as err:
            raise RuntimeError(
                "the cycles backend needs Blender's Python module: pip install 'autosim-clevr[blender]' "
                f"({err})") from err
        return cycles_render

    from .fast import render_batch as fast_render

    def fast(scenes: list[Scene3D]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return fast_render(scenes, settings.device, batch_size=settings.batch_size,
                           max_samples=settings.max_samples)

    return fast


def render_scenes(scenes: list[Scene3D], backend: Backend) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Render a batch; when it fails, find and name the scene that made it fail.

    Scenes are rendered one by one only after a failure, so the normal path keeps batching.
    """
    try:
        return backend(scenes)
    except Exception as batch_error:
        if len(scenes) == 1:
            raise SceneRenderError(scenes[0].id, batch_error) from batch_error
        for scene in scenes:
            try:
                backend([scene])
            except Exception as err:
                raise SceneRenderError(scene.id, err) from err
        raise


def resize(image: torch.Tensor, mask: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear (antialiased) image, nearest-neighbour mask, so class ids stay class ids."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image, mask
    img = torch.nn.functional.interpolate(image[None], size=size, mode="bilinear", align_corners=False,
                                          antialias=True)[0].clamp(0.0, 1.0)
    msk = torch.nn.functional.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0].long()
    return img, msk


def object_records(scene: Scene3D, mask: torch.Tensor, size: tuple[int, int]) -> list[dict[str, Any]]:
    """Objects visible in the image, with boxes in output pixels.

    A box is the projected silhouette's bounding box clipped to the frame; an object counts
    as visible when its class appears in the rendered mask inside that box (objects hidden
    behind others or outside the frame are left out; the scene record still lists them).
    """
    out_h, out_w = size
    sx, sy = out_w / scene.width, out_h / scene.height
    records = []
    for obj in scene.objects:
        box = projected_box(obj, scene.camera, scene.width, scene.height)
        if box is None:
            continue
        x0, y0, x1, y1 = box
        window = mask[int(y0):max(int(y0) + 1, int(-(-y1 // 1))), int(x0):max(int(x0) + 1, int(-(-x1 // 1)))]
        if not bool((window == CLASS_ID[obj.shape]).any()):
            continue
        records.append({"category": obj.shape, "colour": obj.colour, "material": obj.material, "size": obj.size,
                        "box": [x0 * sx, y0 * sy, x1 * sx, y1 * sy], "position": [obj.x, obj.y],
                        "rotation": obj.rotation})
    return records


def render_records(records: list[dict[str, Any]], settings: ClevrSettings,
                   intensities: torch.Tensor | None = None) -> list[Example]:
    """Examples of the records; with ``intensities`` (the fast backend's, see its
    ``render_batch``) the images carry autograd to the lights' strengths."""
    scenes = []
    for record in records:
        try:
            scenes.append(layout(record))
        except Exception as err:
            raise SceneRenderError(record.get("id"), err) from err
    if intensities is not None:
        from .fast import render_batch

        results = render_batch(scenes, settings.device, batch_size=settings.batch_size,
                               max_samples=settings.max_samples, intensities=intensities)
    else:
        results = render_scenes(scenes, backend_for(settings)) if scenes else []
    examples = []
    for record, scene, (image, mask) in zip(records, scenes, results, strict=True):
        objects = object_records(scene, mask, settings.output_size)
        image, mask = resize(image, mask, settings.output_size)
        examples.append(Example(image=image, mask=mask, objects=objects, scene=record))
    return examples


class ClevrSimulator:
    @hookimpl
    def simulator_settings_model(self) -> type[BaseModel]:
        return ClevrSettings

    @hookimpl
    def labels(self) -> list[str]:
        """Mask ids 1 sphere, 2 cube, 3 cylinder (0 background); objects' ``category``."""
        return list(SHAPES)

    @hookimpl
    def parameter_space(self) -> ParameterSpace:
        return clevr_space()

    @hookimpl
    def presets(self) -> dict[str, dict[str, dict[str, Any]]]:
        return clevr_presets()

    @hookimpl
    def render(self, scenes: list[dict[str, Any]], settings: Any) -> list[Example]:
        return render_records(scenes, as_settings(settings))

    @hookimpl
    def differentiable_parameters(self, settings: Any) -> list[str] | None:
        """The lights' strengths, with the fast backend (Cycles gives no gradients)."""
        from .fast import DIFFERENTIABLE

        return list(DIFFERENTIABLE) if as_settings(settings).backend == "fast" else None

    @hookimpl
    def render_differentiable(self, scenes: list[dict[str, Any]], values: dict[str, torch.Tensor],
                              settings: Any) -> list[Example]:
        from .fast import DIFFERENTIABLE

        s = as_settings(settings)
        if s.backend != "fast":
            raise ValueError(f"the {s.backend!r} backend renders without gradients; use backend = 'fast'")
        return render_records(scenes, s, torch.cat([values[name].reshape(len(scenes), 1)
                                                    for name in DIFFERENTIABLE], dim=1))


clevr_simulator = ClevrSimulator()
