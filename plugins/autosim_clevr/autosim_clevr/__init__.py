"""autosim-clevr: CLEVR scenes (spheres, cubes, cylinders) with class masks for autosim."""

from .layout import layout
from .params import ClevrSettings, clevr_presets, clevr_space
from .scene import Camera, Light, Scene3D, SceneObject

__all__ = ["Camera", "ClevrSettings", "Light", "Scene3D", "SceneObject", "clevr_presets", "clevr_space", "layout"]
__version__ = "0.1.0"
