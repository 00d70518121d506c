"""Triangle meshes of everyday objects, built from primitives in numpy, and a BOP PLY reader.

Every mesh is given in its own resting frame: metres, the object standing (or, for the tool,
lying) in its natural pose with its lowest point at z = 0 and its footprint centred on the z
axis. Placing an object is then a yaw rotation, a uniform scale and a translation onto a
surface, and its bottom lies exactly at the surface height. Meshes are plain (vertices, faces)
arrays so that every backend (Cycles, Arnold) builds its geometry from the same numbers.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SEGMENTS = 24  # around a cylinder: the silhouette differs from the circle by < 1 % of its radius


@dataclass(frozen=True)
class Mesh:
    """Triangles: ``vertices`` (V, 3) float64 metres, ``faces`` (F, 3) int64 vertex indices."""

    vertices: np.ndarray
    faces: np.ndarray

    @property
    def footprint_radius(self) -> float:
        """Radius of the smallest circle about the z axis that holds the mesh's footprint."""
        return float(np.hypot(self.vertices[:, 0], self.vertices[:, 1]).max())

    @property
    def height(self) -> float:
        return float(self.vertices[:, 2].max() - self.vertices[:, 2].min())


def _merge(parts: list[Mesh]) -> Mesh:
    vertices, faces, offset = [], [], 0
    for part in parts:
        vertices.append(part.vertices)
        faces.append(part.faces + offset)
        offset += len(part.vertices)
    return Mesh(np.concatenate(vertices), np.concatenate(faces))


def _rest(mesh: Mesh) -> Mesh:
    """The mesh moved so that its lowest point is at z = 0 and its footprint box centred at 0."""
    v = mesh.vertices.copy()
    lo, hi = v.min(axis=0), v.max(axis=0)
    v[:, 0] -= (lo[0] + hi[0]) / 2
    v[:, 1] -= (lo[1] + hi[1]) / 2
    v[:, 2] -= lo[2]
    return Mesh(v, mesh.faces)


def frustum(r0: float, r1: float, z0: float, z1: float, segments: int = SEGMENTS, caps: bool = True) -> Mesh:
    """A closed truncated cone about the z axis from radius r0 at z0 to r1 at z1 (r = 0 gives a tip)."""
    a = np.linspace(0.0, 2 * math.pi, segments, endpoint=False)
    ring = np.stack([np.cos(a), np.sin(a)], axis=1)
    bottom = np.column_stack([ring * r0, np.full(segments, z0)])
    top = np.column_stack([ring * r1, np.full(segments, z1)])
    centres = np.array([[0.0, 0.0, z0], [0.0, 0.0, z1]])
    vertices = np.concatenate([bottom, top, centres])
    i = np.arange(segments)
    j = (i + 1) % segments
    faces = [np.stack([i, j, segments + j], 1), np.stack([i, segments + j, segments + i], 1)]
    if caps:
        cb, ct = 2 * segments, 2 * segments + 1
        faces += [np.stack([np.full(segments, cb), j, i], 1), np.stack([np.full(segments, ct), segments + i,
                                                                        segments + j], 1)]
    return Mesh(vertices, np.concatenate(faces).astype(np.int64))


def box(sx: float, sy: float, sz: float, centre: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> Mesh:
    """An axis-aligned box of full sizes (sx, sy, sz) about ``centre``."""
    corners = np.array([[x, y, z] for z in (-0.5, 0.5) for y in (-0.5, 0.5) for x in (-0.5, 0.5)])
    vertices = corners * np.array([sx, sy, sz]) + np.array(centre)
    quads = [(0, 2, 3, 1), (4, 5, 7, 6), (0, 1, 5, 4), (2, 6, 7, 3), (0, 4, 6, 2), (1, 3, 7, 5)]
    faces = [(a, b, c) for a, b, c, d in quads] + [(a, c, d) for a, b, c, d in quads]
    return Mesh(vertices, np.array(faces, dtype=np.int64))


def ellipsoid(rx: float, ry: float, rz: float, centre: tuple[float, float, float], rings: int = 10,
              segments: int = SEGMENTS) -> Mesh:
    """A UV ellipsoid with semi-axes (rx, ry, rz) about ``centre``."""
    vertices = [(0.0, 0.0, -1.0)]
    for k in range(1, rings):
        theta = math.pi * k / rings - math.pi / 2
        for s in range(segments):
            phi = 2 * math.pi * s / segments
            vertices.append((math.cos(theta) * math.cos(phi), math.cos(theta) * math.sin(phi), math.sin(theta)))
    vertices.append((0.0, 0.0, 1.0))
    top = len(vertices) - 1
    faces = []
    for s in range(segments):
        t = (s + 1) % segments
        faces.append((0, 1 + t, 1 + s))
        faces.append((top, 1 + (rings - 2) * segments + s, 1 + (rings - 2) * segments + t))
    for k in range(rings - 2):
        for s in range(segments):
            t = (s + 1) % segments
            a, b = 1 + k * segments + s, 1 + k * segments + t
            c, d = a + segments, b + segments
            faces += [(a, b, d), (a, d, c)]
    v = np.array(vertices) * np.array([rx, ry, rz]) + np.array(centre)
    return Mesh(v, np.array(faces, dtype=np.int64))


def _rotate_x_to_z(mesh: Mesh) -> Mesh:
    """Turn a mesh built along z onto its side, along x (for lying objects)."""
    x, y, z = mesh.vertices.T
    return Mesh(np.column_stack([z, y, -x]), mesh.faces)


# ------------------------------------------------------------------------- the catalogue ---
def can() -> Mesh:
    return _rest(_merge([frustum(0.033, 0.033, 0.008, 0.112), frustum(0.028, 0.033, 0.0, 0.008),
                         frustum(0.033, 0.029, 0.112, 0.12)]))


def carton() -> Mesh:
    return _rest(box(0.15, 0.09, 0.06))


def bottle() -> Mesh:
    return _rest(_merge([frustum(0.035, 0.035, 0.0, 0.15), frustum(0.035, 0.014, 0.15, 0.19),
                         frustum(0.014, 0.014, 0.19, 0.225)]))


def mug() -> Mesh:
    handle = [box(0.012, 0.014, 0.06, (0.062, 0.0, 0.05)), box(0.02, 0.014, 0.012, (0.052, 0.0, 0.078)),
              box(0.02, 0.014, 0.012, (0.052, 0.0, 0.022))]
    return _rest(_merge([frustum(0.045, 0.045, 0.0, 0.095), *handle]))


def tool() -> Mesh:
    """A screwdriver lying on its side: a thick handle and a thin metal shaft along x."""
    handle = frustum(0.016, 0.016, 0.0, 0.1)
    shaft = frustum(0.004, 0.004, 0.1, 0.2)
    tip = frustum(0.004, 0.001, 0.2, 0.21)
    return _rest(_rotate_x_to_z(_merge([handle, shaft, tip])))


def duck() -> Mesh:
    body = ellipsoid(0.06, 0.042, 0.035, (0.0, 0.0, 0.035))
    head = ellipsoid(0.026, 0.026, 0.026, (0.035, 0.0, 0.085))
    beak = _rotate_x_to_z(frustum(0.01, 0.0, 0.0, 0.025))
    beak = Mesh(beak.vertices + np.array([0.058, 0.0, 0.082]), beak.faces)
    return _rest(_merge([body, head, beak]))


CATALOGUE = {"can": can, "box": carton, "bottle": bottle, "mug": mug, "tool": tool, "duck": duck}
"""The shipped object classes, in label order."""


def shipped_meshes() -> dict[str, Mesh]:
    return {name: build() for name, build in CATALOGUE.items()}


# ----------------------------------------------------------------------------- BOP models ---
_PLY_TYPES = {"char": "b", "int8": "b", "uchar": "B", "uint8": "B", "short": "h", "int16": "h", "ushort": "H",
              "uint16": "H", "int": "i", "int32": "i", "uint": "I", "uint32": "I", "float": "f", "float32": "f",
              "double": "d", "float64": "d"}


def read_ply(path: str | Path) -> Mesh:
    """Vertices and (triangulated) faces of a PLY file, ASCII or binary little-endian, as BOP ships.

    BOP models are in millimetres; the result is in metres, rested on z = 0.
    """
    path = Path(path)
    data = path.read_bytes()
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise ValueError(f"{path}: not a PLY file")
    header = data[:end].decode("ascii", "replace").splitlines()
    body_start = data.index(b"\n", end) + 1
    fmt = next((line.split()[1] for line in header if line.startswith("format")), "")
    elements: list[tuple[str, int, list[tuple[str, ...]]]] = []
    for line in header:
        words = line.split()
        if words[:1] == ["element"]:
            elements.append((words[1], int(words[2]), []))
        elif words[:1] == ["property"] and elements:
            elements[-1][2].append(tuple(words[1:]))
    if fmt == "ascii":
        tokens = data[body_start:].split()
        pos = 0
        vertices = faces = None
        for name, count, props in elements:
            if name == "vertex":
                width = len(props)
                rows = np.array(tokens[pos:pos + count * width], dtype=np.float64).reshape(count, width)
                pos += count * width
                names = [p[-1] for p in props]
                vertices = rows[:, [names.index("x"), names.index("y"), names.index("z")]]
            elif name == "face":
                out = []
                for _ in range(count):
                    n = int(tokens[pos])
                    idx = [int(t) for t in tokens[pos + 1:pos + 1 + n]]
                    pos += 1 + n
                    out += [(idx[0], idx[k], idx[k + 1]) for k in range(1, n - 1)]
                faces = np.array(out, dtype=np.int64)
            else:
                raise ValueError(f"{path}: unsupported ASCII element {name!r}")
    elif fmt == "binary_little_endian":
        vertices, faces = _read_binary(path, data, body_start, elements)
    else:
        raise ValueError(f"{path}: unsupported PLY format {fmt!r} (ascii or binary_little_endian)")
    if vertices is None or faces is None or len(faces) == 0:
        raise ValueError(f"{path}: no vertices or faces")
    return _rest(Mesh(vertices / 1000.0, faces))


def _read_binary(path: Path, data: bytes, pos: int,
                 elements: list[tuple[str, int, list[tuple[str, ...]]]]) -> tuple[np.ndarray, np.ndarray]:
    vertices = faces = None
    for name, count, props in elements:
        if all(p[0] != "list" for p in props):
            dtype = np.dtype([(p[-1], "<" + _PLY_TYPES[p[0]]) for p in props])
            rows = np.frombuffer(data, dtype=dtype, count=count, offset=pos)
            pos += dtype.itemsize * count
            if name == "vertex":
                vertices = np.column_stack([rows["x"], rows["y"], rows["z"]]).astype(np.float64)
            continue
        # Elements with list properties are read row by row; of a face, the vertex index list is
        # kept and anything else (texture coordinates, flags) skipped.
        out = []
        for _ in range(count):
            indices: tuple[int, ...] = ()
            for prop in props:
                if prop[0] == "list":
                    cfmt, ifmt = "<" + _PLY_TYPES[prop[1]], _PLY_TYPES[prop[2]]
                    (n,) = struct.unpack_from(cfmt, data, pos)
                    pos += struct.calcsize(cfmt)
                    values = struct.unpack_from(f"<{n}{ifmt}", data, pos)
                    pos += n * struct.calcsize("<" + ifmt)
                    if prop[-1] in ("vertex_indices", "vertex_index"):
                        indices = values
                else:
                    pos += struct.calcsize("<" + _PLY_TYPES[prop[0]])
            if name == "face":
                out += [(indices[0], indices[k], indices[k + 1]) for k in range(1, len(indices) - 1)]
        if name == "face":
            faces = np.array(out, dtype=np.int64)
    if vertices is None or faces is None:
        raise ValueError(f"{path}: no vertex or face element")
    return vertices, faces


def bop_meshes(models_path: str | Path) -> dict[str, Mesh]:
    """``obj_000001.ply``, ... of a BOP ``models/`` folder, named ``obj_000001`` etc., sorted."""
    files = sorted(Path(models_path).glob("obj_*.ply"))
    if not files:
        raise ValueError(f"models_path {models_path}: no obj_*.ply files (a BOP models/ folder is expected)")
    return {f.stem: read_ply(f) for f in files}
