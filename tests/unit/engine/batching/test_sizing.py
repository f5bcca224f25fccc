"""The batch is sized from the machine: all the free GPU memory the KV cache may take, no more."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch
from transformers import Glm46VConfig

from glimpse.engine.batching.kv_cache import BLOCK_TOKENS, FP8_KV_DTYPE, CacheGeometry, PagedKVCache
from glimpse.engine.batching.sizing import CPU_BATCH, MAX_AUTO_BATCH, size_batch, step_activation_bytes
from glimpse.errors import ModelLoadError

GiB = 2**30


@pytest.fixture(scope="module")
def flash():
    """GLM-4.6V-Flash's real sizes (the default ``Glm46VConfig``) and its bf16 KV geometry."""
    config = Glm46VConfig()
    text = config.text_config
    geometry = CacheGeometry(
        num_layers=text.num_hidden_layers,
        num_kv_heads=text.num_key_value_heads,
        head_dim=text.hidden_size // text.num_attention_heads,
        dtype=torch.bfloat16,
        device=torch.device("cuda"),
    )
    return config, geometry


def _size(flash, requested, free, **kw):
    config, geometry = flash
    args = {"max_seq_len": 8192, "prefill_tokens": 8192, "cuda_graphs": False} | kw
    return size_batch(requested, geometry=geometry, model_config=config, free_bytes=free, **args)


def test_on_the_cpu_the_batch_is_the_small_default_or_as_set(flash):
    assert _size(flash, None, None).slots == CPU_BATCH
    assert _size(flash, 3, None).slots == 3


def test_on_an_h100_the_kv_cache_takes_what_the_weights_and_a_step_leave(flash):
    _, geometry = flash
    free = int((79.2 - 20.6) * GiB)  # an 80 GB card after GLM-4.6V-Flash's bf16 weights
    size = _size(flash, None, free)
    per_slot = geometry.bytes_per_token * 8192
    # every slot's blocks at full length, plus the scratch and copy-on-write blocks
    assert size.kv_bytes == size.slots * per_slot + 2 * BLOCK_TOKENS * geometry.bytes_per_token
    assert size.kv_bytes + size.reserve_bytes <= 0.9 * free  # never more than the free memory allows
    assert size.kv_bytes + size.reserve_bytes + per_slot > 0.9 * free  # and not one slot less
    assert 16 < size.slots < MAX_AUTO_BATCH  # far past the old fixed 16
    assert "free GPU memory" in size.reason


def test_auto_sizing_stops_at_the_cap_when_memory_is_plenty(flash):
    size = _size(flash, None, 1000 * GiB, max_seq_len=1024)
    assert size.slots == MAX_AUTO_BATCH


def test_an_explicit_size_wins_unless_it_cannot_fit(flash, caplog):
    assert _size(flash, 8, 60 * GiB).slots == 8
    with caplog.at_level(logging.WARNING):
        lowered = _size(flash, 1000, 60 * GiB)
    assert lowered.slots < 1000
    assert "lowered from 1000" in lowered.reason
    assert "does not fit" in caplog.text


def test_graphs_and_a_bigger_prefill_budget_leave_fewer_slots(flash):
    free = 40 * GiB
    plain = _size(flash, None, free)
    assert _size(flash, None, free, cuda_graphs=True).reserve_bytes > plain.reserve_bytes
    assert _size(flash, None, free, prefill_tokens=32768).slots < plain.slots


def test_the_size_is_what_the_paged_cache_allocates():
    geometry = CacheGeometry(2, 2, 4, torch.float32, torch.device("cpu"))
    for slots, max_seq_len in ((3, 40), (1, 16), (5, 100)):
        size = size_batch(
            slots,
            geometry=geometry,
            model_config=None,
            max_seq_len=max_seq_len,
            prefill_tokens=64,
            free_bytes=None,
            cuda_graphs=False,
        )
        assert size.kv_bytes == PagedKVCache(geometry, slots, max_seq_len).nbytes


def test_no_room_for_one_slot_is_a_load_error(flash):
    with pytest.raises(ModelLoadError, match="MAX_SEQ_LEN"):
        _size(flash, None, 1 * GiB)


def test_activations_grow_with_the_tokens_of_a_step(flash):
    config, _ = flash
    small = step_activation_bytes(config, 256, 16, 2)
    assert step_activation_bytes(config, 8192, 16, 2) > 20 * small


def test_an_fp8_cache_fits_twice_the_slots_in_the_same_memory(flash):
    config, geometry = flash
    fp8 = dataclasses.replace(geometry, storage=FP8_KV_DTYPE)
    free = 40 * GiB  # few enough slots that twice as many stay under the cap of 256
    bf16_size = _size(flash, None, free)
    fp8_size = _size((config, fp8), None, free)
    assert fp8.bytes_per_token * 2 == geometry.bytes_per_token
    # The step's activations stay in the model's dtype: the same reserve, all the rest for slots.
    assert fp8_size.reserve_bytes == bf16_size.reserve_bytes
    assert fp8_size.slots in (2 * bf16_size.slots, 2 * bf16_size.slots + 1)
    assert fp8_size.kv_bytes == (fp8_size.slots * 8192 + 2 * BLOCK_TOKENS) * fp8.bytes_per_token
