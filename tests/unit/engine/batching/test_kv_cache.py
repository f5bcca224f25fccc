from __future__ import annotations

import pytest
import torch

from glimpse.engine.batching import CacheGeometry, SlotKVCache
from glimpse.engine.batching.kv_cache import FP8_KV_DTYPE, kv_storage_dtype

GEOMETRY = CacheGeometry(
    num_layers=2, num_kv_heads=2, head_dim=4, dtype=torch.float32, device=torch.device("cpu")
)


def _prompt(length: int, fill: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    base = torch.arange(length, dtype=torch.float32).view(1, 1, length, 1).expand(1, 2, length, 4)
    return [(base + fill + layer, -(base + fill + layer)) for layer in range(GEOMETRY.num_layers)]


def test_bytes_per_token_counts_keys_and_values_of_every_layer():
    assert GEOMETRY.bytes_per_token == 2 * 2 * 2 * 4 * 4
    cache = SlotKVCache(GEOMETRY, max_slots=3, max_seq_len=8)
    assert cache.nbytes == 3 * 8 * GEOMETRY.bytes_per_token


def test_allocate_fills_slots_in_order_and_refuses_when_full():
    cache = SlotKVCache(GEOMETRY, max_slots=2, max_seq_len=8)
    assert cache.allocate(_prompt(3, 100.0)) == 0
    assert cache.allocate(_prompt(5, 200.0)) == 1
    assert cache.lengths() == [3, 5]
    assert cache.free == 0
    keys, values = cache.view(1, 2, 5)
    assert torch.equal(keys[1], _prompt(5, 200.0)[1][0][0])
    assert torch.equal(values[0, :, :3], _prompt(3, 100.0)[1][1][0])
    with pytest.raises(RuntimeError):
        cache.allocate(_prompt(1, 0.0))
    with pytest.raises(ValueError, match="exceeds"):
        SlotKVCache(GEOMETRY, max_slots=2, max_seq_len=4).allocate(_prompt(5, 0.0))


def test_release_moves_the_last_slot_into_the_hole():
    cache = SlotKVCache(GEOMETRY, max_slots=3, max_seq_len=8)
    for length, fill in ((2, 10.0), (4, 20.0), (3, 30.0)):
        cache.allocate(_prompt(length, fill))
    assert cache.release(0) == 2
    assert cache.lengths() == [3, 4]
    for layer in range(GEOMETRY.num_layers):
        keys, values = cache.view(layer, 2, 3)
        assert torch.equal(keys[0], _prompt(3, 30.0)[layer][0][0])
        assert torch.equal(values[0], _prompt(3, 30.0)[layer][1][0])
    assert cache.release(1) is None
    assert cache.lengths() == [3]
    with pytest.raises(IndexError):
        cache.release(1)


def test_write_step_appends_one_token_per_slot_at_its_own_length():
    cache = SlotKVCache(GEOMETRY, max_slots=2, max_seq_len=8)
    cache.allocate(_prompt(2, 0.0))
    cache.allocate(_prompt(5, 0.0))
    new_keys = torch.full((2, 2, 1, 4), 7.0)
    new_keys[1] = 9.0
    positions = torch.tensor(cache.lengths())
    cache.write_step(0, new_keys, -new_keys, positions)
    cache.advance(2)
    assert cache.lengths() == [3, 6]
    keys, values = cache.view(0, 2, 6)
    assert torch.equal(keys[0, :, 2], torch.full((2, 4), 7.0))
    assert torch.equal(keys[1, :, 5], torch.full((2, 4), 9.0))
    assert torch.equal(values[1, :, 5], torch.full((2, 4), -9.0))
    assert torch.equal(keys[0, :, :2], _prompt(2, 0.0)[0][0][0])  # prompt untouched


def test_advance_refuses_to_overflow_a_slot():
    cache = SlotKVCache(GEOMETRY, max_slots=1, max_seq_len=3)
    cache.allocate(_prompt(3, 0.0))
    with pytest.raises(RuntimeError, match="full"):
        cache.advance(1)


def test_packed_writes_land_in_each_slot_at_its_own_positions():
    cache = SlotKVCache(GEOMETRY, max_slots=3, max_seq_len=8)
    assert [cache.allocate(), cache.allocate(_prompt(2, 50.0)), cache.allocate()] == [0, 1, 2]
    assert cache.lengths() == [0, 2, 0]
    # One decode token for slot 1, a chunk of three for slot 2, one token for slot 0.
    slots, positions = torch.tensor([1, 2, 2, 2, 0]), torch.tensor([2, 0, 1, 2, 0])
    keys = torch.arange(5.0).view(5, 1, 1).expand(5, 2, 4)
    cache.write(0, keys, -keys, slots, positions)
    for slot, count in ((1, 1), (2, 3), (0, 1)):
        cache.grow(slot, count)
    assert cache.lengths() == [1, 3, 3]
    slot_keys, slot_values = cache.slot_view(0, 2, 3)
    assert slot_keys.shape == (2, 3, 4)
    assert slot_keys[0, :, 0].tolist() == [1.0, 2.0, 3.0]
    assert slot_values[1, :, 0].tolist() == [-1.0, -2.0, -3.0]
    assert cache.slot_view(0, 1, 3)[0][0, :, 0].tolist() == [50.0, 51.0, 0.0]
    assert cache.slot_view(0, 0, 1)[0][0, 0, 0] == 4.0
    with pytest.raises(RuntimeError, match="full"):
        cache.grow(2, 6)


FP8 = CacheGeometry(
    num_layers=2,
    num_kv_heads=2,
    head_dim=4,
    dtype=torch.bfloat16,
    device=torch.device("cpu"),
    storage=FP8_KV_DTYPE,
)


def _fp8(values: torch.Tensor) -> torch.Tensor:
    """What an fp8 cache reads back for ``values``: e4m3 rounding, saturated at ±448."""
    return values.clamp(-448, 448).to(FP8_KV_DTYPE).to(values.dtype)


def test_an_fp8_cache_takes_half_the_bytes_of_bfloat16():
    bf16 = CacheGeometry(num_layers=2, num_kv_heads=2, head_dim=4, dtype=torch.bfloat16, device=FP8.device)
    assert FP8.bytes_per_token * 2 == bf16.bytes_per_token == 2 * 2 * 2 * 4 * 2
    cache = SlotKVCache(FP8, max_slots=3, max_seq_len=8)
    assert cache.keys[0].dtype == cache.values[1].dtype == FP8_KV_DTYPE
    assert cache.nbytes == 3 * 8 * FP8.bytes_per_token
    assert kv_storage_dtype("fp8") == FP8_KV_DTYPE
    assert kv_storage_dtype("auto") is None


def test_fp8_writes_read_back_within_fp8_precision():
    torch.manual_seed(0)
    cache = SlotKVCache(FP8, max_slots=2, max_seq_len=8)
    prompt = [(torch.randn(1, 2, 3, 4) * 3, torch.randn(1, 2, 3, 4)) for _ in range(FP8.num_layers)]
    assert cache.allocate(prompt) == 0
    assert cache.allocate() == 1
    step = torch.randn(2, 2, 1, 4, dtype=torch.bfloat16)
    step[1, 0, 0, 0] = 1000.0  # beyond e4m3's range: saturates, never NaN
    cache.write_step(1, step, -step, torch.tensor([3, 0]))
    packed = torch.randn(2, 2, 4)
    cache.write(0, packed, packed * 2, torch.tensor([1, 1]), torch.tensor([0, 1]))

    keys, values = cache.slot_view(0, 0, 3)
    assert torch.equal(keys.float(), _fp8(prompt[0][0][0]))
    assert torch.equal(values.float(), _fp8(prompt[0][1][0]))
    # e4m3 keeps 3 mantissa bits: a normal value is within 2^-4 of itself, a tiny one within 2^-10
    torch.testing.assert_close(keys.float(), prompt[0][0][0], rtol=2**-4, atol=2**-10)
    read = cache.keys[1][[0, 1], :, [3, 0]].float()
    assert read[1, 0, 0] == 448.0
    torch.testing.assert_close(read[0], step[0, :, 0].float(), rtol=2**-4, atol=2**-10)
    assert torch.equal(cache.values[1][[0, 1], :, [3, 0]].float(), _fp8(-step[:, :, 0].float()))
    assert torch.equal(cache.slot_view(0, 1, 2)[1].float(), _fp8(packed * 2).transpose(0, 1))


def test_fp8_rows_move_and_swap_byte_for_byte():
    torch.manual_seed(1)
    cache = SlotKVCache(FP8, max_slots=3, max_seq_len=8)
    prompts = [
        [(torch.randn(1, 2, n, 4), torch.randn(1, 2, n, 4)) for _ in range(FP8.num_layers)] for n in (2, 5, 3)
    ]
    for prompt in prompts:
        cache.allocate(prompt)
    stored = [cache.slot_view(layer, 2, 3) for layer in range(FP8.num_layers)]
    stored = [(k.clone(), v.clone()) for k, v in stored]
    cache.copy_rows(2, 0, 3)
    for layer, (keys, values) in enumerate(stored):
        assert torch.equal(cache.slot_view(layer, 0, 3)[0].view(torch.uint8), keys.view(torch.uint8))
        assert torch.equal(cache.slot_view(layer, 0, 3)[1].view(torch.uint8), values.view(torch.uint8))
    # Slot 1 leaves keeping its rows: they swap into slot 2, slot 2's sequence moves into slot 1.
    assert cache.release(1, keep=True) == 2
    assert cache.lengths() == [2, 3]  # copy_rows moves rows only, not lengths
    for layer in range(FP8.num_layers):
        assert torch.equal(cache.slot_view(layer, 1, 3)[0].float(), _fp8(prompts[2][layer][0][0]))
        assert torch.equal(cache.slot_view(layer, 2, 5)[0].float(), _fp8(prompts[1][layer][0][0]))
        assert torch.equal(cache.slot_view(layer, 2, 5)[1].float(), _fp8(prompts[1][layer][1][0]))
