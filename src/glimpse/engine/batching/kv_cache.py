"""A paged key/value cache: fixed-size blocks allocated once, a block table per running sequence.

``generate()`` grows its cache by concatenation, which reallocates and copies every
layer's keys and values at every step. Here the memory is allocated once at start-up
as a pool of *blocks* of ``BLOCK_TOKENS`` tokens (every layer's keys and values), and
each running sequence has a *block table*: the blocks that hold its tokens, in order.
A step writes each new key/value in place, at ``(table[position // 16], position % 16)``.

Why blocks and not one ``max_seq_len`` row per sequence: two sequences can list the
same block. A prompt that starts like one seen before (a follow-up about an image, a
new question about a known image) maps the cached blocks into its table, with no copy,
and several running requests about one image hold its blocks once
(``prefix_cache``; reference counts and eviction in ``block_pool``). A sequence only
ever writes into blocks it holds alone: the blocks of a prefix hit are whole and
written, and a hit that ends inside a block gets its own copy of that block
(copy-on-write, at admission).

Sequences are numbered by *slot*, ``0 .. n-1`` compacted (the last one takes the place
of one that leaves: a table row moves, no keys or values). The pool has the blocks of
``max_slots`` sequences of ``max_seq_len`` tokens (``pool_blocks``) — the memory a
cache of one full-length row per sequence had — plus the scratch block (``block_pool``)
and one spare for copy-on-write, so a running sequence can always get a block however
many cached blocks there are: the cache lives only in blocks no sequence needs.

Layout per layer: ``[num_kv_heads, num_blocks, BLOCK_TOKENS, head_dim]``, so gathering a
sequence's blocks (``read``) is one ``index_select`` whose result is already the
``[heads, length, dim]`` that ``scaled_dot_product_attention`` takes. Tables live on
the device (``tables``, ``[max_slots, blocks per sequence]``, free entries on the
scratch block), written through from the host at ``sync``; the padded decode path
(CUDA graphs) reads them at a fixed address.

Storage may be narrower than the model's dtype: ``float8_e4m3fn`` (``kv_cache_dtype
fp8``) halves a bfloat16 cache, so twice the tokens fit. Every write casts to the
storage dtype, saturating at ±448 as vLLM's fp8 cache does, with a per-tensor scale
of 1.0 (vLLM's default when no calibrated scales come with the checkpoint); attention
casts what it reads back to the query's dtype. Allocation, writes, gathers and block
copies go through a ``uint8`` view of the fp8 buffers, so they need only byte kernels
(torch gained float8 kernels op by op, and ``torch>=2.4`` is allowed); only the casts
touch float8. Reads (``read``, ``view``) return what is stored, fp8 included.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from glimpse.engine.batching.block_pool import SCRATCH_BLOCK, BlockPool

__all__ = [
    "BLOCK_TOKENS",
    "FP8_KV_DTYPE",
    "CacheGeometry",
    "PagedKVCache",
    "gather_blocks",
    "gather_rows",
    "kv_storage_dtype",
    "pool_blocks",
]

#: Tokens per block: the granularity of sharing and of a prefix hit (vLLM's default block size).
BLOCK_TOKENS = 16
#: The storage of ``kv_cache_dtype fp8``: 4 exponent and 3 mantissa bits, finite values only.
FP8_KV_DTYPE = torch.float8_e4m3fn
_FP8_MAX = torch.finfo(FP8_KV_DTYPE).max
#: Blocks beyond the sequences' own: the scratch block and the spare a copy-on-write takes.
_EXTRA_BLOCKS = 2


def kv_storage_dtype(kv_cache_dtype: str) -> torch.dtype | None:
    """The storage dtype a ``kv_cache_dtype`` setting names (``None``: the model's own dtype)."""
    if kv_cache_dtype == "auto":
        return None
    if kv_cache_dtype == "fp8":
        return FP8_KV_DTYPE
    raise ValueError(f"unknown kv_cache_dtype {kv_cache_dtype!r}")


def _blocks_per_sequence(max_seq_len: int) -> int:
    return -(-max_seq_len // BLOCK_TOKENS)


def pool_blocks(max_slots: int, max_seq_len: int) -> int:
    """Blocks of a pool for ``max_slots`` sequences of up to ``max_seq_len`` tokens each."""
    return max_slots * _blocks_per_sequence(max_seq_len) + _EXTRA_BLOCKS


@dataclass(slots=True, frozen=True)
class CacheGeometry:
    """What one token of one sequence costs in the cache, per layer."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    #: The model's compute dtype: what attention reads back.
    dtype: torch.dtype
    device: torch.device
    #: What the cache stores, when narrower than ``dtype`` (``None``: ``dtype`` itself).
    storage: torch.dtype | None = None

    @property
    def stored_dtype(self) -> torch.dtype:
        return self.dtype if self.storage is None else self.storage

    @property
    def bytes_per_token(self) -> int:
        element = torch.empty((), dtype=self.stored_dtype).element_size()
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * element


class PagedKVCache:
    """Up to ``max_slots`` sequences of at most ``max_seq_len`` tokens, in blocks allocated once.

    Not thread-safe: only the engine thread touches it.
    """

    def __init__(
        self,
        geometry: CacheGeometry,
        max_slots: int,
        max_seq_len: int,
        on_evict: Callable[[int], None] | None = None,
    ) -> None:
        if max_slots < 1 or max_seq_len < 1:
            raise ValueError("max_slots and max_seq_len must be positive")
        self.geometry = geometry
        self.max_slots = max_slots
        self.max_seq_len = max_seq_len
        self.num_blocks = pool_blocks(max_slots, max_seq_len)
        self.pool = BlockPool(self.num_blocks, on_evict)
        shape = (geometry.num_kv_heads, self.num_blocks, BLOCK_TOKENS, geometry.head_dim)
        stored = geometry.stored_dtype
        device = geometry.device
        # zero bytes are fp8 zeros too
        self.keys = [
            torch.zeros(shape, dtype=_bits_dtype(stored), device=device).view(stored)
            for _ in range(geometry.num_layers)
        ]
        self.values = [
            torch.zeros(shape, dtype=_bits_dtype(stored), device=device).view(stored)
            for _ in range(geometry.num_layers)
        ]
        self._fp8 = stored == FP8_KV_DTYPE
        width = _blocks_per_sequence(max_seq_len)
        # The tables as the host edits them; on another device, copied over at ``sync``.
        self._host_tables = torch.full((max_slots, width), SCRATCH_BLOCK, dtype=torch.long)
        self.tables = self._host_tables if device.type == "cpu" else self._host_tables.to(device)
        self._dirty = False
        # Host-side copies of each sequence's table and length, so scheduling never syncs with the device.
        self._blocks: list[list[int]] = []
        self._lengths: list[int] = []

    @property
    def used(self) -> int:
        return len(self._lengths)

    @property
    def free(self) -> int:
        return self.max_slots - len(self._lengths)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def length(self, slot: int) -> int:
        return self._lengths[slot]

    def lengths(self) -> list[int]:
        return list(self._lengths)

    def block_table(self, slot: int) -> list[int]:
        """The blocks holding ``slot``'s tokens, in order (a copy)."""
        return list(self._blocks[slot])

    def allocate(self, shared: Sequence[int] = (), length: int = 0) -> int:
        """Take the next slot for a sequence whose first ``length`` tokens are in blocks ``shared``.

        ``shared`` are cached blocks (``pool.lookup``), held by the new sequence from now on. When
        ``length`` ends inside the last of them, the sequence gets a copy of that block to write on.
        """
        if self.free == 0:
            raise RuntimeError("no free cache slot")
        if not 0 <= length <= self.max_seq_len or len(shared) != -(-length // BLOCK_TOKENS):
            raise ValueError(f"{len(shared)} blocks do not hold exactly {length} tokens")
        blocks = list(shared)
        for block in blocks:
            self.pool.hold(block)
        if length % BLOCK_TOKENS:
            source = blocks[-1]
            copy = self.pool.allocate()  # the source is held: never the block evicted for this
            self._copy_block(source, copy)
            self.pool.release(source)
            blocks[-1] = copy
        slot = len(self._lengths)
        self._blocks.append(blocks)
        self._lengths.append(length)
        if blocks:
            self._host_tables[slot, : len(blocks)] = torch.tensor(blocks, dtype=torch.long)
            self._dirty = True
        return slot

    def ensure(self, slot: int, length: int) -> None:
        """Give ``slot`` the blocks to hold ``length`` tokens (before a step writes them)."""
        if length > self.max_seq_len:
            raise RuntimeError(f"slot {slot} is full")
        blocks = self._blocks[slot]
        while len(blocks) * BLOCK_TOKENS < length:
            block = self.pool.allocate()
            self._host_tables[slot, len(blocks)] = block
            blocks.append(block)
            self._dirty = True

    def release(self, slot: int) -> int | None:
        """Free ``slot`` and its hold on its blocks; returns the slot whose sequence moved into it.

        Running sequences stay in slots ``0 .. n-1``, so the last one's table moves into the hole.
        Blocks are let go last first, so a cached prefix's later blocks are evicted before its
        first ones (which more prompts share).
        """
        last = len(self._lengths) - 1
        if not 0 <= slot <= last:
            raise IndexError(f"slot {slot} is not in use")
        for block in reversed(self._blocks[slot]):
            self.pool.release(block)
        self._dirty = True
        if slot == last:
            self._host_tables[slot] = SCRATCH_BLOCK
            self._blocks.pop()
            self._lengths.pop()
            return None
        self._host_tables[slot] = self._host_tables[last]
        self._host_tables[last] = SCRATCH_BLOCK
        self._blocks[slot] = self._blocks.pop()
        self._lengths[slot] = self._lengths.pop()
        return last

    def sync(self) -> None:
        """Copy the host's table edits to the device copy the steps read (a no-op on the CPU)."""
        if self._dirty and self.tables is not self._host_tables:
            self.tables.copy_(self._host_tables)
        self._dirty = False

    def locate(self, slots: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Where token ``positions[i]`` of ``slots[i]`` goes: (block, row in the block), on the device."""
        return self.tables[slots, positions // BLOCK_TOKENS], positions % BLOCK_TOKENS

    def write(
        self, layer: int, keys: torch.Tensor, values: torch.Tensor, where: tuple[torch.Tensor, torch.Tensor]
    ) -> None:
        """Write ``keys[i]``/``values[i]`` (``[kv_heads, head_dim]``) at ``where`` (``locate``'s ``i``-th)."""
        blocks, rows = where
        # Adjacent advanced indices keep their place: the written slice is [kv_heads, n, head_dim].
        self._put(self.keys[layer], (slice(None), blocks, rows), keys.transpose(0, 1))
        self._put(self.values[layer], (slice(None), blocks, rows), values.transpose(0, 1))

    def blocks_of(self, slot: int, length: int) -> torch.Tensor:
        """The device table entries of ``slot``'s first ``length`` tokens (after ``sync``)."""
        return self.tables[slot, : -(-length // BLOCK_TOKENS)]

    def read(self, layer: int, blocks: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``length`` keys and values in ``blocks``: ``[kv_heads, length, head_dim]``, a copy."""
        heads, _, _, dim = self.keys[layer].shape
        count = int(blocks.shape[0])
        keys = gather_blocks(self.keys[layer], blocks).reshape(heads, count * BLOCK_TOKENS, dim)
        values = gather_blocks(self.values[layer], blocks).reshape(heads, count * BLOCK_TOKENS, dim)
        return keys[:, :length], values[:, :length]

    def view(self, layer: int, n: int, kv_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of slots ``0 .. n-1`` up to ``kv_len`` tokens, ``[n, kv_heads, kv_len, head_dim]``.

        Reads the device tables only (no host state), so a CUDA graph can capture it; rows past a
        sequence's blocks read the scratch block, for the caller's mask to hide.
        """
        table = self.tables[:n, : -(-kv_len // BLOCK_TOKENS)]
        keys, values = (
            gather_rows(buffer, table)[:, :, :kv_len] for buffer in (self.keys[layer], self.values[layer])
        )
        return keys, values

    def grow(self, slot: int, count: int) -> None:
        """Record that ``slot`` gained ``count`` tokens (after a step wrote them)."""
        if self._lengths[slot] + count > len(self._blocks[slot]) * BLOCK_TOKENS:
            raise RuntimeError(f"slot {slot} is full")
        self._lengths[slot] += count

    def advance(self, n: int) -> None:
        """Record that slots ``0 .. n-1`` each gained one token (after a decode step)."""
        for slot in range(n):
            self.grow(slot, 1)

    def _put(self, buffer: torch.Tensor, index: tuple[Any, ...], new: torch.Tensor) -> None:
        """``buffer[index] = new``, cast to the storage dtype (fp8: saturated, written as bytes)."""
        if self._fp8:
            stored = new.clamp(-_FP8_MAX, _FP8_MAX).to(FP8_KV_DTYPE)
            buffer.view(torch.uint8)[index] = stored.view(torch.uint8)
        else:
            buffer[index] = new

    def _copy_block(self, source: int, target: int) -> None:
        for tensor in (*self.keys, *self.values):
            bits = tensor.view(torch.uint8) if self._fp8 else tensor
            bits[:, target].copy_(bits[:, source])


def gather_blocks(buffer: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """``buffer``'s ``blocks`` (``[kv_heads, len(blocks), BLOCK_TOKENS, head_dim]``), fp8 as bytes."""
    if buffer.dtype == FP8_KV_DTYPE:
        return buffer.view(torch.uint8).index_select(1, blocks).view(FP8_KV_DTYPE)
    return buffer.index_select(1, blocks)


def gather_rows(buffer: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
    """Each row of block ``tables`` ``[rows, width]`` read from ``buffer`` as one sequence:
    ``[rows, kv_heads, width * BLOCK_TOKENS, head_dim]`` (device ops only, capturable)."""
    heads, _, _, dim = buffer.shape
    rows, width = tables.shape
    gathered = gather_blocks(buffer, tables.reshape(-1)).view(heads, rows, width * BLOCK_TOKENS, dim)
    return gathered.transpose(0, 1)


def _bits_dtype(stored: torch.dtype) -> torch.dtype:
    """What a buffer of ``stored`` is allocated as: fp8 as ``uint8``, the same bytes."""
    return torch.uint8 if stored == FP8_KV_DTYPE else stored
