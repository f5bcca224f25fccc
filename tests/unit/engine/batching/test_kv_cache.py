from __future__ import annotations

import pytest
import torch

from glimpse.engine.batching import CacheGeometry, PagedKVCache
from glimpse.engine.batching.block_pool import SCRATCH_BLOCK
from glimpse.engine.batching.kv_cache import BLOCK_TOKENS, FP8_KV_DTYPE, kv_storage_dtype, pool_blocks

GEOMETRY = CacheGeometry(
    num_layers=2, num_kv_heads=2, head_dim=4, dtype=torch.float32, device=torch.device("cpu")
)
B = BLOCK_TOKENS


def _fill(cache, slot, count, start=0, base=0.0):
    """Write ``count`` tokens at ``start ..`` of ``slot``: key = base + position (every layer, head, dim)."""
    cache.ensure(slot, start + count)
    positions = torch.arange(start, start + count)
    where = cache.locate(torch.full((count,), slot), positions)
    keys = (base + positions.float()).view(count, 1, 1).expand(count, 2, 4)
    for layer in range(GEOMETRY.num_layers):
        cache.write(layer, keys + layer, -(keys + layer), where)
    cache.grow(slot, count)


def _keys(cache, slot, layer=0):
    length = cache.length(slot)
    return cache.read(layer, cache.blocks_of(slot, length), length)


def test_the_pool_holds_every_slot_at_full_length_plus_scratch_and_spare():
    assert GEOMETRY.bytes_per_token == 2 * 2 * 2 * 4 * 4
    cache = PagedKVCache(GEOMETRY, max_slots=3, max_seq_len=40)  # 3 blocks a sequence
    assert cache.num_blocks == pool_blocks(3, 40) == 3 * 3 + 2
    assert cache.nbytes == cache.num_blocks * B * GEOMETRY.bytes_per_token
    assert cache.keys[0].shape == (2, cache.num_blocks, B, 4)


def test_writes_read_back_across_blocks_and_slots_stay_apart():
    cache = PagedKVCache(GEOMETRY, max_slots=2, max_seq_len=64)
    a, b = cache.allocate(), cache.allocate()
    assert (a, b) == (0, 1)
    _fill(cache, a, 20, base=100.0)  # two blocks
    _fill(cache, b, 5, base=200.0)
    _fill(cache, a, 15, start=20, base=100.0)  # a third block
    assert cache.lengths() == [35, 5]
    assert len(cache.block_table(a)) == 3
    assert len(cache.block_table(b)) == 1
    assert not set(cache.block_table(a)) & set(cache.block_table(b))
    keys, values = _keys(cache, a, layer=1)
    assert keys.shape == (2, 35, 4)
    assert keys[0, :, 0].tolist() == [101.0 + i for i in range(35)]
    assert values[1, :, 3].tolist() == [-101.0 - i for i in range(35)]
    assert _keys(cache, b)[0][1, :, 2].tolist() == [200.0 + i for i in range(5)]


def test_the_padded_view_reads_each_slot_and_the_scratch_block_past_it():
    cache = PagedKVCache(GEOMETRY, max_slots=3, max_seq_len=64)
    for slot, count in enumerate((3, 18)):
        cache.allocate()
        _fill(cache, slot, count, base=10.0 * (slot + 1))
    keys, values = cache.view(0, 3, 20)
    assert keys.shape == values.shape == (3, 2, 20, 4)
    assert keys[0, 0, :3, 0].tolist() == [10.0, 11.0, 12.0]
    assert keys[1, 1, :18, 0].tolist() == [20.0 + i for i in range(18)]
    assert torch.equal(values[1, :, :18], -keys[1, :, :18])
    assert cache.tables[2].tolist() == [SCRATCH_BLOCK] * cache.tables.shape[1]  # a free slot


def test_release_moves_the_last_table_into_the_hole_and_frees_the_blocks():
    cache = PagedKVCache(GEOMETRY, max_slots=3, max_seq_len=32)
    for slot, count in enumerate((2, 20, 3)):
        cache.allocate()
        _fill(cache, slot, count, base=10.0 * (slot + 1))
    free = cache.pool.available
    last_table = cache.block_table(2)
    assert cache.release(0) == 2
    assert cache.lengths() == [3, 20]
    assert cache.block_table(0) == last_table
    assert _keys(cache, 0)[0][0, :, 0].tolist() == [30.0, 31.0, 32.0]
    assert cache.pool.available == free + 1
    assert cache.release(1) is None
    assert cache.tables[1].tolist() == [SCRATCH_BLOCK, SCRATCH_BLOCK]
    assert cache.pool.available == free + 3
    with pytest.raises(IndexError):
        cache.release(1)


def test_a_slot_never_grows_past_its_length_or_its_blocks():
    cache = PagedKVCache(GEOMETRY, max_slots=2, max_seq_len=20)
    cache.allocate()
    _fill(cache, 0, 16)
    with pytest.raises(RuntimeError, match="full"):
        cache.grow(0, 1)  # no block for token 17 yet
    _fill(cache, 0, 4, start=16)
    with pytest.raises(RuntimeError, match="full"):
        cache.ensure(0, 21)
    cache.allocate()
    with pytest.raises(RuntimeError, match="no free cache slot"):
        cache.allocate()


def test_shared_blocks_are_mapped_not_copied_and_a_partial_one_is_copied_on_write():
    cache = PagedKVCache(GEOMETRY, max_slots=4, max_seq_len=64)
    cache.allocate()
    _fill(cache, 0, 40, base=1000.0)
    table = cache.block_table(0)
    whole = cache.allocate(table[:2], 2 * B)
    assert cache.block_table(whole) == table[:2]
    assert [cache.pool.refs(block) for block in table] == [2, 2, 1]
    partial = cache.allocate(table[:3], 2 * B + 5)  # ends inside the third block
    mine = cache.block_table(partial)
    assert mine[:2] == table[:2]
    assert mine[2] not in table
    assert [cache.pool.refs(block) for block in table] == [3, 3, 1]
    assert torch.equal(_keys(cache, partial)[0], _keys(cache, 0)[0][:, : 2 * B + 5])
    _fill(cache, partial, 3, start=2 * B + 5, base=-500.0)  # its own copy: the first slot's block unchanged
    assert _keys(cache, 0)[0][0, 2 * B + 5, 0] == 1000.0 + 2 * B + 5
    with pytest.raises(ValueError, match="do not hold"):
        cache.allocate(table[:1], 2 * B)


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
    cache = PagedKVCache(FP8, max_slots=3, max_seq_len=8)
    assert cache.keys[0].dtype == cache.values[1].dtype == FP8_KV_DTYPE
    assert cache.nbytes * 2 == PagedKVCache(bf16, max_slots=3, max_seq_len=8).nbytes
    assert kv_storage_dtype("fp8") == FP8_KV_DTYPE
    assert kv_storage_dtype("auto") is None


def test_fp8_writes_read_back_within_fp8_precision_and_copies_are_byte_for_byte():
    torch.manual_seed(0)
    cache = PagedKVCache(FP8, max_slots=3, max_seq_len=64)
    cache.allocate()
    cache.ensure(0, 20)
    keys = torch.randn(20, 2, 4, dtype=torch.bfloat16) * 3
    keys[3, 0, 0] = 1000.0  # beyond e4m3's range: saturates, never NaN
    values = torch.randn(20, 2, 4, dtype=torch.bfloat16)
    cache.write(1, keys, values, cache.locate(torch.zeros(20, dtype=torch.long), torch.arange(20)))
    cache.grow(0, 20)
    read_keys, read_values = cache.read(1, cache.blocks_of(0, 20), 20)
    assert read_keys.dtype == FP8_KV_DTYPE
    assert torch.equal(read_keys.to(torch.bfloat16), _fp8(keys).transpose(0, 1))
    assert torch.equal(read_values.to(torch.bfloat16), _fp8(values).transpose(0, 1))
    assert read_keys[0, 3, 0].float() == 448.0
    padded_keys, _ = cache.view(1, 1, 20)
    assert torch.equal(padded_keys[0].view(torch.uint8), read_keys.view(torch.uint8))
    copy = cache.allocate(cache.block_table(0)[:2], 19)  # copy-on-write of the second block
    assert torch.equal(
        cache.read(1, cache.blocks_of(copy, 19), 19)[0].view(torch.uint8), read_keys[:, :19].view(torch.uint8)
    )


def test_cached_blocks_never_keep_a_sequence_from_its_blocks():
    """However many blocks the prefix cache keeps, every slot still gets a full-length sequence."""
    cache = PagedKVCache(GEOMETRY, max_slots=2, max_seq_len=40)  # 3 blocks a sequence, 8 in all
    for round_ in range(3):  # fill the pool with cached blocks, all registered, held by nobody
        slot = cache.allocate()
        _fill(cache, slot, 40)
        for index, block in enumerate(cache.block_table(slot)):
            cache.pool.register(block, bytes([round_, index]))
        cache.release(slot)
    assert cache.pool.cached == 7  # every block but the scratch one (the third round evicted two)
    assert cache.pool.evictions == 2
    for slot in range(2):
        cache.allocate()
        _fill(cache, slot, 40, base=float(slot))
    assert cache.pool.evictions == 2 + 6  # the sequences' six blocks: cached ones taken back
    assert cache.pool.cached == 1  # the spare block stays cached
    assert _keys(cache, 0)[0][0, :, 0].tolist() == [float(i) for i in range(40)]
