"""Shared test settings."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    # The tests run next to other work on two cores; one thread avoids oversubscription.
    torch.set_num_threads(1)
