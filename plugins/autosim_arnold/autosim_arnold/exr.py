"""A reader for the uncompressed (multi-part) scanline OpenEXR files Cycles writes.

Blender writes a render with several passes as one multi-part EXR, one part per pass
(``ViewLayer.Combined`` with channels A, B, G, R; ``ViewLayer.IndexOB`` with X; ...). With
``exr_codec = "NONE"`` each chunk is one scanline of raw little-endian channel rows, so reading
it back is a few lines of numpy and skips loading it into Blender as an image.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

_PIXEL = {0: np.dtype("<u4"), 1: np.dtype("<f2"), 2: np.dtype("<f4")}


def _cstring(data: bytes, pos: int) -> tuple[str, int]:
    end = data.index(b"\0", pos)
    return data[pos:end].decode("latin-1"), end + 1


def _header(data: bytes, pos: int) -> tuple[dict[str, tuple[str, bytes]], int]:
    attrs = {}
    while data[pos] != 0:
        name, pos = _cstring(data, pos)
        kind, pos = _cstring(data, pos)
        (size,) = struct.unpack_from("<i", data, pos)
        attrs[name] = (kind, data[pos + 4:pos + 4 + size])
        pos += 4 + size
    return attrs, pos + 1


def _channels(raw: bytes) -> list[tuple[str, int]]:
    out, pos = [], 0
    while raw[pos] != 0:
        name, pos = _cstring(raw, pos)
        (pixel_type,) = struct.unpack_from("<i", raw, pos)
        xs, ys = struct.unpack_from("<ii", raw, pos + 8)
        if (xs, ys) != (1, 1):
            raise ValueError(f"channel {name!r} is subsampled")
        out.append((name, pixel_type))
        pos += 16
    return out


def read_exr(path: str | Path) -> dict[str, np.ndarray]:
    """Every channel as a float32 (H, W) array, row 0 at the top, keyed by its full name
    (``ViewLayer.Combined.R``; part names are the channels' prefixes in Blender's files)."""
    data = Path(path).read_bytes()
    if data[:4] != b"\x76\x2f\x31\x01":
        raise ValueError(f"{path}: not an OpenEXR file")
    (flags,) = struct.unpack_from("<I", data, 4)
    if flags & 0x200:
        raise ValueError(f"{path}: tiled EXR files are not supported")
    multipart = bool(flags & 0x1000)
    headers, pos = [], 8
    while True:
        attrs, pos = _header(data, pos)
        headers.append(attrs)
        if not multipart or data[pos] == 0:
            pos += 1 if multipart else 0
            break
    out: dict[str, np.ndarray] = {}
    for attrs in headers:
        if attrs["compression"][1] != b"\x00":
            raise ValueError(f"{path}: compressed EXR (write it with exr_codec 'NONE')")
        x0, y0, x1, y1 = struct.unpack("<iiii", attrs["dataWindow"][1])
        width, height = x1 - x0 + 1, y1 - y0 + 1
        channels = _channels(attrs["channels"][1])
        offsets = np.frombuffer(data, dtype="<u8", count=height, offset=pos)
        pos += 8 * height
        planes = {name: np.empty((height, width), dtype=np.float32) for name, _ in channels}
        for offset in offsets.tolist():
            at = offset + (4 if multipart else 0)
            y, _size = struct.unpack_from("<ii", data, at)
            at += 8
            for name, pixel_type in channels:
                dtype = _PIXEL[pixel_type]
                planes[name][y - y0] = np.frombuffer(data, dtype=dtype, count=width, offset=at)
                at += dtype.itemsize * width
        out.update(planes)
    return out
