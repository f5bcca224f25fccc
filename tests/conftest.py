"""Suite-wide: ``gpu`` tests run only where torch sees a CUDA device."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def colour_codes_adapter(tmp_path_factory: pytest.TempPathFactory):
    """(adapter folder, report) of the tiny model fine-tuned to answer colours as product codes."""
    from tests.lora_data import train_colour_codes

    return train_colour_codes(tmp_path_factory.mktemp("colour-codes"))


@pytest.fixture(scope="session")
def random_tiny_adapter(tmp_path_factory: pytest.TempPathFactory):
    """A random-weight LoRA adapter of the shipped tiny model."""
    from tests.lora_data import random_adapter

    return random_adapter(tmp_path_factory.mktemp("random-adapter") / "adapter")
