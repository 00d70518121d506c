"""Scene builders shared by the fast-backend tests."""

from __future__ import annotations

from autosim_clevr.scene import Camera, Light, Scene3D, SceneObject


def make_scene(objects: list[SceneObject], *, width: int = 48, height: int = 32, samples: int = 4,
               bounces: int = 1, seed: int = 0, camera: Camera | None = None, key: float = 1.0,
               fill: float = 1.0, back: float = 1.0, ambient: float = 1.0, scene_id: object = "s") -> Scene3D:
    return Scene3D(
        id=scene_id, seed=seed, width=width, height=height, samples=samples, bounces=bounces,
        camera=camera or Camera(position=(7.36, -6.93, 4.96)),
        lights=[Light("key", (6.45, -2.91, 4.26), key), Light("fill", (-4.67, -4.01, 3.01), fill),
                Light("back", (-1.17, 2.65, 5.82), back)],
        ambient=ambient, objects=objects,
    )
