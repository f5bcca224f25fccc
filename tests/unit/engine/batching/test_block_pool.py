"""Reference counts, the hash index and LRU eviction of KV blocks: no block is reused while held."""

from __future__ import annotations

import pytest

from glimpse.engine.batching.block_pool import SCRATCH_BLOCK, BlockPool


def test_never_cached_blocks_go_first_and_the_scratch_block_never():
    pool = BlockPool(4)
    taken = [pool.allocate() for _ in range(3)]
    assert sorted(taken) == [1, 2, 3]
    assert SCRATCH_BLOCK not in taken
    with pytest.raises(RuntimeError, match="no free KV block"):
        pool.allocate()
    with pytest.raises(ValueError, match="scratch"):
        pool.hold(SCRATCH_BLOCK)


def test_a_shared_block_is_freed_only_when_its_last_holder_leaves():
    pool = BlockPool(3)
    block = pool.allocate()
    assert pool.register(block, b"k")
    pool.hold(block)  # a second sequence maps it
    assert pool.refs(block) == 2
    assert pool.shared == 1
    pool.release(block)
    assert pool.refs(block) == 1
    assert pool.shared == 0
    other = pool.allocate()
    with pytest.raises(RuntimeError):  # the held block is never handed out, cached or not
        pool.allocate()
    pool.release(block)
    assert pool.lookup(b"k") == block  # kept, held by nobody
    assert pool.allocate() == block  # and evicted for new tokens: no free block is left
    assert pool.lookup(b"k") is None
    assert pool.evictions == 1
    assert other != block


def test_free_blocks_are_taken_before_cached_ones_and_the_oldest_cached_first():
    evicted: list[int] = []
    pool = BlockPool(5, on_evict=evicted.append)
    blocks = [pool.allocate() for _ in range(4)]
    for index, block in enumerate(blocks[:3]):
        assert pool.register(block, bytes([index]))
    for block in (blocks[2], blocks[0], blocks[3], blocks[1]):  # released in this order
        pool.release(block)
    assert pool.available == 4
    assert pool.allocate() == blocks[3]  # never cached: taken first, nothing evicted
    assert evicted == []
    assert pool.allocate() == blocks[2]  # then the least recently released cached block
    assert pool.lookup(bytes([2])) is None
    assert pool.lookup(bytes([0])) == blocks[0]
    pool.hold(blocks[0])  # a hit: recently used again
    pool.release(blocks[0])
    assert pool.allocate() == blocks[1]
    assert evicted == [1, 1]


def test_one_block_per_key_and_forgotten_blocks_are_free_again():
    pool = BlockPool(4)
    first, second = pool.allocate(), pool.allocate()
    assert pool.register(first, b"same")
    assert not pool.register(second, b"same")  # computed twice at once: the second stays private
    assert not pool.register(first, b"other")  # one key per block
    assert pool.cached == 1
    pool.release(second)
    assert pool.key(second) is None
    pool.release(first)
    pool.forget(first)  # its sequence failed: not to be reused
    assert pool.lookup(b"same") is None
    assert pool.cached == 0
    assert pool.evictions == 0
    assert sorted(pool.allocate() for _ in range(3)) == [1, 2, 3]
    assert pool.evictions == 0  # forgotten blocks are free, not evicted
