"""autosim-unet: UNet semantic segmentation task for autosim (entry point ``autosim.tasks: unet``).

The names below are imported on first use (they bring torch), so that importing the package,
as its entry point ``autosim_unet.hooks`` does, stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_SOURCES = {
    "DatasetError": "data", "load_folder": "data", "load_pair": "data",
    "confusion_matrix": "metrics", "iou_per_class": "metrics", "per_image_cross_entropy": "metrics",
    "segmentation_metrics": "metrics",
    "UNet": "model", "conv_layer_count": "model",
    "UNetSettings": "plugin", "UNetTask": "plugin", "unet_task": "plugin",
}

__all__ = [
    "DatasetError", "UNet", "UNetSettings", "UNetTask", "confusion_matrix", "conv_layer_count",
    "iou_per_class", "load_folder", "load_pair", "per_image_cross_entropy", "segmentation_metrics", "unet_task",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{source}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_SOURCES])
