from __future__ import annotations

import pytest
import torch

from glimpse.engine.batching import CacheGeometry, SlotKVCache

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
