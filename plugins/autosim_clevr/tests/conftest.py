"""Shared test settings; scene builders are in clevr_scenes.py."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(1)
