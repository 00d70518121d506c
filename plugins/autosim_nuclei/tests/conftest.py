"""Shared test settings."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(1)
