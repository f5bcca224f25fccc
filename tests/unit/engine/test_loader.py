"""The loader: what stays mapped from the checkpoint files after a quantized load."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from glimpse.config import EngineSettings
from glimpse.engine.loader import load_model

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")


def _mapped_safetensors() -> list[tuple[int, int]]:
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].endswith(".safetensors"):
            start, end = fields[0].split("-")
            ranges.append((int(start, 16), int(end, 16)))
    return ranges


def _storages(tensor):
    """A plain tensor's storage address, or those of a torchao tensor's inner tensors."""
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is None:
        return [tensor.untyped_storage().data_ptr()]
    return [address for inner in flatten()[0] for address in _storages(getattr(tensor, inner))]


def _in_mapped_files(model) -> list[str]:
    ranges = _mapped_safetensors()
    return [
        name
        for name, tensor in (*model.named_parameters(), *model.named_buffers())
        if any(start <= address < end for address in _storages(tensor) for start, end in ranges)
    ]


@pytest.mark.slow
def test_a_model_quantized_while_loading_keeps_nothing_in_the_checkpoint_mapping():
    """The tiny checkpoint is float32, as the CPU loads by default, so kept weights would be views."""
    plain = load_model(EngineSettings(model="tiny", device="cpu"))
    assert _in_mapped_files(plain.model)  # the check sees views of the file where there are some
    loaded = load_model(EngineSettings(model="tiny", device="cpu", quantization="int8"))
    assert _in_mapped_files(loaded.model) == []
    kept = loaded.model.get_input_embeddings().weight
    assert type(kept) is torch.nn.Parameter
    assert torch.equal(kept, plain.model.get_input_embeddings().weight)
