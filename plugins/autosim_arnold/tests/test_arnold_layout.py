from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from arnold_testing import convex_hull, hulls_disjoint, record

from autosim_arnold.geometry import project, silhouette
from autosim_arnold.meshes import box, read_ply, shipped_meshes
from autosim_arnold.params import ArnoldSettings, cells
from autosim_arnold.scene import ALL_ROOMS, Camera, layout

MESHES = shipped_meshes()


def test_shipped_meshes_rest_on_z0() -> None:
    assert sorted(MESHES) == ["bottle", "box", "can", "duck", "mug", "tool"]
    for name, mesh in MESHES.items():
        assert mesh.vertices[:, 2].min() == pytest.approx(0.0, abs=1e-12), name
        assert 0.02 < mesh.height < 0.3, name
        assert mesh.faces.max() < len(mesh.vertices)


@pytest.mark.parametrize("cell", [*cells(ArnoldSettings(qualities=["low"])), "workshop:5:high", "workshop:8:high"])
def test_objects_rest_on_their_surface_without_intersecting(cell: str) -> None:
    for seed in range(3):
        spec = layout(record(cell, seed=seed, n_objects=8), MESHES, 64)
        assert len(spec.objects) >= 2
        room = ALL_ROOMS[spec.room]
        hulls = []
        for obj in spec.objects:
            v = obj.world_vertices()
            # the lowest vertex lies on the surface the location belongs to
            assert v[:, 2].min() == pytest.approx(spec.surface_height, abs=1e-9)
            surface = [b for b in room.blocks if abs(b.top - spec.surface_height) < 1e-9 and b.name != "floor"]
            if spec.surface_height > 0:
                # every vertex over the top of a surface block (the object does not hang over its edge)
                assert any(np.all(np.abs(v[:, 0] - b.centre[0]) <= b.size[0] / 2)
                           and np.all(np.abs(v[:, 1] - b.centre[1]) <= b.size[1] / 2) for b in surface)
            hulls.append(convex_hull([(float(x), float(y)) for x, y in v[:, :2]]))
        for i in range(len(hulls)):
            for j in range(i + 1, len(hulls)):
                assert hulls_disjoint(hulls[i], hulls[j]), (cell, seed, i, j)


def test_same_record_same_layout_and_seed_changes_it() -> None:
    a = layout(record("office:4:low", seed=5), MESHES, 64)
    b = layout(record("office:4:low", seed=5), MESHES, 64)
    c = layout(record("office:4:low", seed=6), MESHES, 64)
    assert [o.position for o in a.objects] == [o.position for o in b.objects]
    assert [o.position for o in a.objects] != [o.position for o in c.objects]


def test_quality_sets_samples_bounces_and_denoiser() -> None:
    low = layout(record("kitchen:3:low"), MESHES, 64)
    high = layout(record("kitchen:3:high"), MESHES, 64)
    assert low.samples < high.samples and low.bounces < high.bounces
    assert not low.denoise and high.denoise


def test_projection_and_silhouette_of_a_square() -> None:
    # A 0.2 m square facing a camera 1 m away with a 90 degree field of view: the frame is 2 m wide
    # there, 50 px per metre at 100 px, so the square spans 10 px about the centre.
    cam = Camera((0.0, -1.0, 0.0), (0.0, 0.0, 0.0), 90.0)
    sq = box(0.2, 0.0, 0.2)
    xy, depth = project(sq.vertices, cam, 100, 100)
    assert np.allclose(sorted(set(np.round(xy[:, 0], 9))), [45.0, 55.0])
    assert np.allclose(depth, 1.0)
    mask = silhouette(sq.vertices, sq.faces, cam, 100, 100)
    assert mask.sum() == 100 and mask[45:55, 45:55].all()


def _write_ply(path: Path, binary: bool) -> None:
    cube = box(20.0, 10.0, 30.0, (5.0, 5.0, 100.0))  # millimetres, floating in the air
    header = ["ply", f"format {'binary_little_endian' if binary else 'ascii'} 1.0",
              f"element vertex {len(cube.vertices)}", "property float x", "property float y", "property float z",
              "property uchar red", f"element face {len(cube.faces)}", "property list uchar int vertex_indices",
              *(["property list uchar float texcoord"] if binary else []), "end_header"]
    with path.open("wb") as f:
        f.write(("\n".join(header) + "\n").encode())
        for v in cube.vertices:
            f.write(struct.pack("<fffB", *v, 7) if binary else f"{v[0]} {v[1]} {v[2]} 7\n".encode())
        for face in cube.faces:
            # binary faces also carry texture coordinates, as BOP's textured models do
            f.write(struct.pack("<BiiiB6f", 3, *face, 6, *range(6)) if binary
                    else f"3 {face[0]} {face[1]} {face[2]}\n".encode())


@pytest.mark.parametrize("binary", [False, True])
def test_bop_ply_in_metres_resting_on_z0(tmp_path: Path, binary: bool) -> None:
    _write_ply(tmp_path / "obj_000001.ply", binary)
    mesh = read_ply(tmp_path / "obj_000001.ply")
    assert mesh.faces.shape == (12, 3)
    assert np.allclose(mesh.vertices.min(axis=0), [-0.01, -0.005, 0.0])
    assert np.allclose(mesh.vertices.max(axis=0), [0.01, 0.005, 0.03])


def test_not_a_ply_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.ply").write_text("hello")
    with pytest.raises(ValueError, match="not a PLY"):
        read_ply(tmp_path / "x.ply")


def test_silhouette_matches_testing_every_pixel_against_every_triangle() -> None:
    for seed in range(4):
        spec = layout(record(f"office:{2 * seed}:low", seed=seed, n_objects=5), MESHES, 48)
        for obj in spec.objects:
            vertices = obj.world_vertices()
            xy, _ = project(vertices, spec.camera, 48, 48)
            px, py = (g.reshape(-1, 1) for g in np.meshgrid(np.arange(48) + 0.5, np.arange(48) + 0.5))
            a, b, c = (xy[obj.mesh.faces[:, k]] for k in range(3))

            def side(p: np.ndarray, q: np.ndarray, px: np.ndarray = px, py: np.ndarray = py) -> np.ndarray:
                return (q[:, 0] - p[:, 0]) * (py - p[:, 1]) - (q[:, 1] - p[:, 1]) * (px - p[:, 0])

            e0, e1, e2 = side(a, b), side(b, c), side(c, a)
            inside = (((e0 >= 0) & (e1 >= 0) & (e2 >= 0)) | ((e0 <= 0) & (e1 <= 0) & (e2 <= 0))) \
                & (np.abs(e0 + e1 + e2) > 0)
            brute = inside.any(axis=1).reshape(48, 48)
            assert brute.any()
            assert (silhouette(vertices, obj.mesh.faces, spec.camera, 48, 48) == brute).all()


def test_not_an_exr_is_refused(tmp_path: Path) -> None:
    from autosim_arnold.exr import read_exr

    (tmp_path / "x.exr").write_bytes(b"P6\n1 1\n255\n\0\0\0")
    with pytest.raises(ValueError, match="not an OpenEXR"):
        read_exr(tmp_path / "x.exr")
