"""autosim-arnold: photorealistic object placement for detection (Blender Cycles, or Arnold when its SDK is present)."""

__version__ = "0.1.0"
