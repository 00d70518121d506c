"""Instance masks to background / interior / boundary classes, against a pixel-by-pixel reading of the rule."""

from __future__ import annotations

import torch

from autosim_core.instances import BOUNDARY, INTERIOR, boundary_classes


def brute_force(ids: torch.Tensor) -> torch.Tensor:
    height, width = ids.shape
    out = torch.zeros_like(ids)
    for y in range(height):
        for x in range(width):
            if ids[y, x] == 0:
                continue
            neighbours = [(y + dy, x + dx) for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))
                          if 0 <= y + dy < height and 0 <= x + dx < width]
            out[y, x] = BOUNDARY if any(ids[p] != ids[y, x] for p in neighbours) else INTERIOR
    return out


def test_the_classes_follow_the_rule_on_random_blobs() -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        # Blocky random instances: 0..5 on a coarse grid, upsampled, so objects touch and meet the border.
        ids = torch.randint(0, 6, (6, 7), generator=g).repeat_interleave(3, 0).repeat_interleave(3, 1)
        assert torch.equal(boundary_classes(ids), brute_force(ids))


def test_two_touching_squares_are_parted_by_two_boundary_pixels() -> None:
    ids = torch.zeros(8, 10, dtype=torch.long)
    ids[1:7, 1:5], ids[1:7, 5:9] = 1, 2
    classes = boundary_classes(ids)
    assert (classes[3, 4], classes[3, 5]) == (BOUNDARY, BOUNDARY)
    assert classes[3, 3] == INTERIOR and classes[3, 6] == INTERIOR
    assert int((classes == INTERIOR).sum()) == 2 * (4 * 2)   # each 6x4 square keeps a 4x2 interior
    # An object against the image's border: the border is no boundary.
    edge = torch.zeros(4, 4, dtype=torch.long)
    edge[:, :2] = 3
    assert boundary_classes(edge)[:, 0].tolist() == [INTERIOR] * 4
