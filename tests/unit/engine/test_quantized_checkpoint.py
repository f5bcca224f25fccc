"""``glimpse quantize``'s writer: torchao's format, written from the model's own memory, in shards."""

from __future__ import annotations

import json

import pytest
import torch
from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict

from glimpse.config import EngineSettings
from glimpse.engine.loader import load_model
from glimpse.engine.quantized_checkpoint import _flatten_without_copies, write_quantized


def _inner(tensor):
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is None:
        return [tensor]
    return [leaf for name in flatten()[0] for leaf in _inner(getattr(tensor, name))]


def _plain(tensor):
    return tensor.dequantize() if hasattr(tensor, "qdata") else tensor


@pytest.fixture(scope="module")
def quantized():
    return load_model(EngineSettings(model="tiny", device="cpu", quantization="int8"))


@pytest.mark.slow
def test_the_flattened_state_dict_is_torchaos_without_its_copies(quantized):
    state = quantized.model.state_dict()
    expected, expected_metadata = flatten_tensor_state_dict(state)
    tensors, metadata = _flatten_without_copies(state)
    assert metadata == expected_metadata
    assert tensors.keys() == expected.keys()
    for key, tensor in tensors.items():
        assert torch.equal(tensor, expected[key]), key
    own = {leaf.data_ptr() for tensor in state.values() for leaf in _inner(tensor)}
    assert all(tensor.data_ptr() in own for tensor in tensors.values())
    assert not all(tensor.data_ptr() in own for tensor in expected.values())  # torchao's are copies


@pytest.mark.slow
def test_a_checkpoint_written_in_shards_loads_as_the_model_it_was_written_from(quantized, tmp_path):
    out = write_quantized(
        EngineSettings(model="tiny", device="cpu", quantization="int8"), tmp_path / "q", shard_bytes=2**20
    )
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    written = load_model(EngineSettings(model=str(out), device="cpu"))
    assert written.quantization == "int8"
    expected = quantized.model.state_dict()
    actual = written.model.state_dict()
    assert actual.keys() == expected.keys()
    for name, tensor in actual.items():
        assert type(tensor) is type(expected[name]), name
        assert torch.equal(_plain(tensor), _plain(expected[name])), name
