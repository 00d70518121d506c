"""Object detection for autosim: the ``yolo`` and ``faster-rcnn`` tasks and the ``shapes`` simulator."""

__version__ = "0.1.0"
