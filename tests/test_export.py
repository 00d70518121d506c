import json

import numpy as np
import pytest
import torch
from PIL import Image

from autosim_core.export import write_examples
from autosim_core.records import Example


def _example(seed: int) -> Example:
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(3, 12, 16, generator=g)
    mask = torch.randint(0, 4, (12, 16), generator=g)
    return Example(image=image, mask=mask, objects=[{"category": "cube", "box": [1, 2, 3, 4]}],
                   scene={"id": seed, "seed": seed + 1, "light": 0.5})


def test_written_pngs_read_back_as_the_examples(tmp_path):
    examples = [_example(i) for i in range(3)]
    assert write_examples(examples[:2], tmp_path) == 2
    assert write_examples(examples[2:], tmp_path, start=2) == 1
    rows = [json.loads(line) for line in (tmp_path / "annotations.jsonl").read_text().splitlines()]
    assert [r["image"] for r in rows] == ["images/000000.png", "images/000001.png", "images/000002.png"]
    for example, row in zip(examples, rows, strict=True):
        image = np.asarray(Image.open(tmp_path / row["image"]), dtype=np.float32) / 255
        assert image.shape == (12, 16, 3)
        assert np.abs(image - example.image.permute(1, 2, 0).numpy()).max() <= 0.5 / 255 + 1e-6
        mask = np.asarray(Image.open(tmp_path / row["mask"]))
        assert (mask == example.mask.numpy()).all()
        assert row["objects"] == example.objects
        assert row["scene"] == example.scene


def test_non_image_tensors_are_refused_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match="expected an image tensor"):
        write_examples([Example(image=torch.zeros(2))], tmp_path)
