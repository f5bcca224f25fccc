"""Paged decode attention by each row's length equals the plain ragged path, whatever the lengths.

The gather backend runs eagerly anywhere; the flex backend is compiled (on the CPU here, by
the C++ template, in both block layouts: the CPU's and the one a GPU runs), so those tests
are marked slow and skipped where the CPU cannot compile it.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from glimpse.engine.batching.attention import Span, ragged_attention
from glimpse.engine.batching.block_pool import SCRATCH_BLOCK
from glimpse.engine.batching.kv_cache import FP8_KV_DTYPE, CacheGeometry, PagedKVCache
from glimpse.engine.batching.paged_attention import DecodeMask, paged_decode_attention

HEADS, KV_HEADS, DIM = 8, 2, 16
LENGTHS = [1, 15, 16, 17, 8192, 40]  # a lone token, a block's edges, a long one among short ones
ROWS = 8  # the batch bucket: two padding rows on the scratch block
SCALE = 0.25


def _cache(lengths, max_seq_len=8192 + 32, dtype=torch.float32, storage=None, heads=KV_HEADS, seed=0):
    """A one-layer cache holding ``lengths`` tokens of random keys/values in slots ``0 ..``."""
    geometry = CacheGeometry(1, heads, DIM, dtype, torch.device("cpu"), storage)
    cache = PagedKVCache(geometry, ROWS, max_seq_len)
    generator = torch.Generator().manual_seed(seed)
    for length in lengths:
        slot = cache.allocate()
        _write(cache, slot, length, generator)
    return cache


def _write(cache, slot, count, generator):
    start = cache.length(slot)
    cache.ensure(slot, start + count)
    where = cache.locate(torch.full((count,), slot), torch.arange(start, start + count))
    shape = (count, cache.geometry.num_kv_heads, DIM)
    keys = torch.randn(shape, generator=generator).to(cache.geometry.dtype)
    values = torch.randn(shape, generator=generator).to(cache.geometry.dtype)
    cache.write(0, keys, values, where)
    cache.grow(slot, count)


def _query(dtype=torch.float32, heads=HEADS, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((ROWS, heads, 1, DIM), generator=generator).to(dtype)


def _ragged(cache, query, kv_heads=KV_HEADS):
    """The plain path: each used slot's decode token against its own keys, ``[used, heads * dim]``."""
    cache.sync()
    lengths = cache.lengths()
    spans = [Span(slot, slot, 1, length - 1) for slot, length in enumerate(lengths)]

    def read(index):
        length = lengths[index]
        return cache.read(0, cache.blocks_of(index, length), length)

    rows = query[: len(lengths), :, 0].transpose(0, 1)  # [heads, used, dim]
    out = ragged_attention(rows, spans, read, kv_heads, SCALE)
    return out.transpose(0, 1).reshape(len(lengths), -1)


def _paged(cache, query, mask, kv_heads=KV_HEADS):
    """The paged path over the whole bucket: padding rows attend to one key of the scratch block."""
    cache.sync()
    lengths = cache.lengths()
    lengths = torch.tensor(lengths + [1] * (ROWS - len(lengths)))
    mask.update(cache.tables, lengths)
    out = paged_decode_attention(query, cache.keys[0], cache.values[0], mask, kv_heads, SCALE)
    assert out.shape == (ROWS, 1, query.shape[1] * DIM)
    assert torch.isfinite(out).all()  # the padding rows too
    return out[:, 0]


def _mask(cache, backend, full_blocks=None):
    return DecodeMask(
        ROWS, cache.num_blocks, cache.tables.shape[1], torch.device("cpu"), backend, full_blocks=full_blocks
    )


def _tolerance(dtype):
    return {"atol": 2e-2, "rtol": 2e-2} if dtype == torch.bfloat16 else {"atol": 1e-5, "rtol": 1e-5}


def _check(cache, query, mask, kv_heads=KV_HEADS):
    used = cache.used
    want = _ragged(cache, query, kv_heads)
    got = _paged(cache, query, mask, kv_heads)
    torch.testing.assert_close(got[:used], want, **_tolerance(query.dtype))


def _change_lengths_and_tables(cache):
    """What steps do between two replays: rows cross block edges, one leaves, one joins."""
    generator = torch.Generator().manual_seed(7)
    _write(cache, 2, 1, generator)  # 16 -> 17: a new block
    _write(cache, 1, 1, generator)  # 15 -> 16: its block full
    cache.release(0)  # the last slot's table moves into slot 0
    slot = cache.allocate()
    _write(cache, slot, 33, generator)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gather_equals_ragged_for_rows_of_very_different_lengths(dtype):
    cache = _cache(LENGTHS, dtype=dtype)
    mask = _mask(cache, "gather")
    query = _query(dtype)
    _check(cache, query, mask)
    # the graph-replay property: the same buffers, only lengths and tables changed
    _change_lengths_and_tables(cache)
    _check(cache, query, mask)


def test_gather_ignores_what_lies_past_a_row_length_and_in_blocks_no_row_holds():
    cache = _cache([3, 20])
    mask = _mask(cache, "gather")
    query = _query()
    before = _paged(cache, query, mask)
    # Past a row's length in its own last block: read, then masked (finite values: a masked NaN
    # would still poison the sum, on every path that reads a whole block).
    cache.keys[0][:, cache.block_table(0)[0], 3:] = 1e4
    cache.values[0][:, cache.block_table(1)[1], 4:] = 1e4
    held = {SCRATCH_BLOCK, *cache.block_table(0), *cache.block_table(1)}
    cache.keys[0][:, [b for b in range(cache.num_blocks) if b not in held]] = float("nan")
    assert torch.equal(_paged(cache, query, mask), before)


def test_gather_with_query_heads_not_a_power_of_two_of_the_kv_heads():
    cache = _cache(LENGTHS[:4], heads=2)
    _check(cache, _query(heads=6), _mask(cache, "gather"))


def test_gather_reads_an_fp8_cache_as_the_ragged_path_does():
    cache = _cache(LENGTHS, dtype=torch.bfloat16, storage=FP8_KV_DTYPE)
    assert cache.keys[0].dtype == FP8_KV_DTYPE
    mask = _mask(cache, "gather")
    query = _query(torch.bfloat16)
    _check(cache, query, mask)
    _change_lengths_and_tables(cache)
    _check(cache, query, mask)


def _cpu_compiles_flex() -> bool:
    return torch.backends.cpu.get_cpu_capability() != "DEFAULT" and shutil.which("g++") is not None


@pytest.mark.slow
@pytest.mark.skipif(not _cpu_compiles_flex(), reason="flex compiles on x86 CPUs with a C++ compiler")
@pytest.mark.parametrize(
    ("dtype", "full_blocks"),
    [(torch.float32, True), (torch.float32, False), (torch.bfloat16, True)],
    ids=["fp32-cpu-layout", "fp32-gpu-layout", "bf16-cpu-layout"],
)
def test_compiled_flex_equals_ragged_and_replays_with_new_lengths_without_recompiling(dtype, full_blocks):
    from torch._dynamo.utils import counters

    cache = _cache(LENGTHS, dtype=dtype)
    mask = _mask(cache, "flex", full_blocks=full_blocks)
    query = _query(dtype)
    _check(cache, query, mask)
    compiled = counters["stats"]["unique_graphs"]
    _change_lengths_and_tables(cache)
    _check(cache, query, mask)
    assert counters["stats"]["unique_graphs"] == compiled  # new lengths and tables, same kernel


def test_flex_refuses_an_fp8_cache_on_the_cpu():
    cache = _cache([5], dtype=torch.bfloat16, storage=FP8_KV_DTYPE)
    with pytest.raises(NotImplementedError, match="flex attention on the CPU"):
        _paged(cache, _query(torch.bfloat16), _mask(cache, "flex"))
