"""The ``arnold`` simulator's hooks: records -> scene layouts -> a backend -> detection examples."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from autosim_core import Example, ParameterSpace, hookimpl
from pydantic import BaseModel

from .geometry import mask_box, silhouette
from .meshes import Mesh, bop_meshes, shipped_meshes
from .params import ArnoldSettings, arnold_presets, arnold_space, as_settings
from .scene import SceneSpec, layout

Backend = Callable[[SceneSpec], tuple[np.ndarray, np.ndarray]]


class SceneRenderError(RuntimeError):
    """A scene could not be laid out or rendered; the message names its id."""


@functools.cache
def _meshes(models_path: str | None) -> dict[str, Mesh]:
    return bop_meshes(models_path) if models_path else shipped_meshes()


def meshes_for(settings: ArnoldSettings) -> dict[str, Mesh]:
    return _meshes(settings.models_path)


def backend_for(settings: ArnoldSettings) -> Backend:
    """The render function of the settings' backend: a SceneSpec in, linear RGB and the index pass out."""
    from .cycles import render as cycles_render

    return functools.partial(cycles_render, threads=settings.threads)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1.0 / 2.4) - 0.055)


def detections(spec: SceneSpec, index: np.ndarray, min_visible_fraction: float) -> list[dict[str, Any]]:
    """Each object with visible pixels: ``category``, ``box`` of its pixels in the index pass
    (x1, y1 exclusive), ``visible_fraction`` (visible / whole-silhouette pixels) and ``ignore``
    (less visible than ``min_visible_fraction``, as BOP flags them)."""
    out = []
    for i, obj in enumerate(spec.objects):
        visible = index == i + 1
        count = int(visible.sum())
        if count == 0:
            continue
        full = int(silhouette(obj.world_vertices(), obj.mesh.faces, spec.camera, spec.width, spec.height).sum())
        fraction = min(1.0, count / max(full, 1))
        out.append({"category": obj.category, "box": mask_box(visible), "visible_fraction": fraction,
                    "ignore": fraction < min_visible_fraction, "instance": i + 1,
                    "position": list(obj.position), "yaw": obj.yaw, "metallic": obj.material.metallic})
    return out


def render_records(records: list[dict[str, Any]], settings: ArnoldSettings,
                   backend: Backend | None = None) -> list[Example]:
    meshes = meshes_for(settings)
    labels = sorted(meshes)
    class_of = {name: i + 1 for i, name in enumerate(labels)}
    render = backend or backend_for(settings)
    examples = []
    for record in records:
        try:
            spec = layout(record, meshes, settings.image_size)
            rgb, index = render(spec)
        except Exception as err:
            raise SceneRenderError(f"arnold scene {record.get('id')!r} failed: {err}") from err
        lookup = np.array([0] + [class_of[o.category] for o in spec.objects], dtype=np.int64)
        image = torch.from_numpy(np.ascontiguousarray(linear_to_srgb(rgb).transpose(2, 0, 1), dtype=np.float32))
        examples.append(Example(image=image, mask=torch.from_numpy(lookup[index]),
                                objects=detections(spec, index, settings.min_visible_fraction), scene=record))
    return examples


class ArnoldSimulator:
    @hookimpl
    def simulator_settings_model(self) -> type[BaseModel]:
        return ArnoldSettings

    @hookimpl
    def labels(self, settings: Any) -> list[str]:
        """The object classes (sorted names: the shipped ones, or a BOP folder's obj_* models)."""
        return sorted(meshes_for(as_settings(settings)))

    @hookimpl
    def parameter_space(self, settings: Any) -> ParameterSpace:
        return arnold_space(settings)

    @hookimpl
    def presets(self, settings: Any) -> dict[str, dict[str, dict[str, Any]]]:
        return arnold_presets(settings)

    @hookimpl
    def render(self, scenes: list[dict[str, Any]], settings: Any) -> list[Example]:
        return render_records(scenes, as_settings(settings))


arnold_simulator = ArnoldSimulator()
