"""autosim-unet: UNet semantic segmentation task for autosim (entry point ``autosim.tasks: unet``)."""

from .data import DatasetError, load_folder
from .metrics import confusion_matrix, iou_per_class, per_image_cross_entropy, segmentation_metrics
from .model import UNet, conv_layer_count
from .plugin import UNetSettings, UNetTask, unet_task

__all__ = [
    "DatasetError", "UNet", "UNetSettings", "UNetTask", "confusion_matrix", "conv_layer_count",
    "iou_per_class", "load_folder", "per_image_cross_entropy", "segmentation_metrics", "unet_task",
]
__version__ = "0.1.0"
