"""The simulator plugin: space, presets, layout, resizing, errors, entry point."""

from __future__ import annotations

import itertools
import sys

import pytest
import torch

from autosim_clevr import plugin
from autosim_clevr.contact_sheet import sample_records
from autosim_clevr.layout import gap, layout
from autosim_clevr.params import ClevrSettings, clevr_presets, clevr_space
from autosim_clevr.plugin import SceneRenderError, clevr_simulator, render_records, resize

SMALL = ClevrSettings(output_size=(24, 32), max_samples=2)


def _records(preset: str, n: int, seed: int = 0, size: str = "64x64") -> list[dict]:
    recs = sample_records(preset, n, seed)
    for r in recs:
        r["image_size"] = size
    return recs


def test_entry_point_loads_the_simulator() -> None:
    from autosim_core.plugins import load_registry

    from autosim_clevr import hooks

    registry = load_registry(("simulators",))
    assert registry.targets["simulators"]["clevr"] == "autosim_clevr.hooks:clevr_simulator"
    assert registry.get("simulators", "clevr") is hooks.clevr_simulator
    assert hooks.clevr_simulator.presets() == clevr_simulator.presets()


def test_presets_apply_to_the_space_and_differ() -> None:
    space = clevr_space()
    presets = clevr_presets()
    assert set(presets) == {"target", "initial", "wide"}
    target, initial = (space.override(presets[p]) for p in ("target", "initial"))
    dt, di = target.describe(target.init_psi()), initial.describe(initial.init_psi())
    assert di["ambient"]["median"] < dt["ambient"]["median"]
    assert di["samples"]["median"] < dt["samples"]["median"]
    assert di["metal"]["p"] > dt["metal"]["p"]
    assert set(space.parameters) >= {"ambient", "key_light", "fill_light", "back_light", "samples", "bounces",
                                     "image_size", "x", "y", "metal", "n_objects", "shape", "colour", "size",
                                     "camera_jitter", "light_jitter", "min_dist"}


def test_layout_respects_minimum_distance() -> None:
    rec = sample_records("initial", 1, 3)[0]
    rec.update(n_objects=10, x=[0.0] * 10, y=[0.0] * 10, size=["large"] * 10, min_dist=0.3)
    scene = layout(rec)
    assert 2 <= len(scene.objects) <= 10
    for a, b in itertools.combinations(scene.objects, 2):
        assert gap(a, b) >= 0.3 - 1e-9
    assert layout(rec) == scene  # deterministic given the record


def test_layout_uses_the_first_n_objects_and_sampled_lights() -> None:
    rec = sample_records("target", 1, 4)[0]
    rec.update(n_objects=3, min_dist=0.0, x=[-2.0, 0.0, 2.0] + [9.0] * 7, y=[0.0] * 10, key_light=2.5)
    scene = layout(rec)
    assert [o.x for o in scene.objects] == [-2.0, 0.0, 2.0]
    assert {lt.name: lt.intensity for lt in scene.lights}["key"] == 2.5
    assert (scene.width, scene.height) == tuple(int(v) for v in rec["image_size"].split("x"))


def test_same_record_same_example_different_seed_different_scene() -> None:
    recs = _records("target", 2, 1)
    a = render_records([dict(recs[0])], SMALL)[0]
    b = render_records([dict(recs[0])], SMALL)[0]
    assert torch.equal(a.image, b.image) and torch.equal(a.mask, b.mask)
    other = _records("target", 2, 2)
    c = render_records([other[0]], SMALL)[0]
    assert not torch.equal(a.image, c.image)


def test_render_hook_resizes_and_describes_objects() -> None:
    recs = _records("target", 3, 0, size="96x96")
    examples = clevr_simulator.render(recs, {"output_size": [24, 32], "max_samples": 2})
    assert len(examples) == 3
    for ex, rec in zip(examples, recs, strict=True):
        assert ex.image.shape == (3, 24, 32) and ex.mask.shape == (24, 32)
        assert ex.scene is rec
        assert ex.objects, "a CLEVR-like scene shows some object"
        for obj in ex.objects:
            x0, y0, x1, y1 = obj["box"]
            assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 24
            assert obj["category"] in ("sphere", "cube", "cylinder")
            assert obj["material"] in ("rubber", "metal")


def test_declared_labels_match_the_rendered_ids_and_categories() -> None:
    labels = clevr_simulator.labels()
    assert labels == ["sphere", "cube", "cylinder"]
    examples = clevr_simulator.render(_records("target", 3, 0, size="96x96"), {"output_size": [24, 32],
                                                                              "max_samples": 2})
    for ex in examples:
        assert 0 <= int(ex.mask.min()) and int(ex.mask.max()) <= len(labels)
        for obj in ex.objects:
            assert bool((ex.mask == labels.index(obj["category"]) + 1).any())


def test_resize_keeps_class_ids() -> None:
    mask = torch.zeros(60, 90, dtype=torch.long)
    mask[10:30, 10:40] = 1
    mask[35:55, 50:80] = 3
    mask[5:8, 70:72] = 2
    image = torch.rand(3, 60, 90)
    img, m = resize(image, mask, (24, 32))
    assert m.dtype == torch.int64 and img.shape == (3, 24, 32)
    assert set(m.unique().tolist()) <= {0, 1, 2, 3}
    assert {1, 3} <= set(m.unique().tolist())
    assert float(img.min()) >= 0 and float(img.max()) <= 1


def test_unusable_record_names_its_scene() -> None:
    rec = _records("target", 1)[0]
    rec["id"] = "scene-42"
    rec["image_size"] = "0x0"
    with pytest.raises(SceneRenderError, match="scene-42"):
        render_records([rec], SMALL)


def test_backend_failure_names_the_failing_scene(monkeypatch: pytest.MonkeyPatch) -> None:
    recs = _records("target", 3)
    recs[1]["id"] = "bad-one"

    def backend(scenes):  # type: ignore[no-untyped-def]
        if any(s.id == "bad-one" for s in scenes):
            raise RuntimeError("boom")
        return [(torch.zeros(3, s.height, s.width), torch.zeros(s.height, s.width, dtype=torch.long)) for s in scenes]

    monkeypatch.setattr(plugin, "backend_for", lambda settings: backend)
    with pytest.raises(SceneRenderError, match="bad-one") as info:
        render_records(recs, SMALL)
    assert info.value.scene_id == "bad-one"


def test_cycles_without_blender_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "autosim_clevr.cycles", None)
    with pytest.raises(RuntimeError, match=r"autosim-clevr\[blender\]"):
        plugin.backend_for(ClevrSettings(backend="cycles"))


def test_settings_reject_unknown_keys() -> None:
    with pytest.raises(ValueError):
        ClevrSettings(backnd="fast")  # type: ignore[call-arg]
