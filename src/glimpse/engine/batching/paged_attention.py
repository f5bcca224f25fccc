"""Decode attention over the paged cache by each row's own length, in shapes set by the batch alone.

A CUDA graph replays fixed shapes. ``attention.padded_attention`` gets them by reading
every row up to a common, bucketed length: one long conversation makes every row of the
batch pay for its length, and each (batch, length) bucket is a graph of its own. Here a
step's inputs are the queries ``[n, heads, 1, dim]`` and, in fixed buffers updated in
place (``DecodeMask.update``: device ops only, no host sync), each row's length and its
block-table row; nothing has the KV length in its shape, so one graph per batch size
serves every length, and each row reads its own blocks only.

Two backends, the same math (``attention.ragged_attention`` is the plain path the tests
compare both against):

- ``"flex"``: ``torch.nn.attention.flex_attention``, compiled, over the layer's whole pool
  seen as one sequence ``[1, kv_heads, num_blocks * 16, dim]`` (a view: stored once, the
  batch broadcast over it), with a ``BlockMask`` of 16-token KV blocks whose indices are
  each row's physical blocks and a ``mask_mod`` that hides the tail of its last block;
  grouped-query attention by ``enable_gqa`` (no repeated keys). What torch 2.14's source
  says, and why the choices below:

  * Uncompiled, flex is a reference implementation that ignores the block indices and
    scores every row against every key of the pool through the ``mask_mod`` (cost rows ×
    pool, and the ``mask_mod`` here only tells positions apart inside a row's own blocks).
    So it always runs compiled, static shapes (one kernel per batch size, compiled at its
    first call: at start-up, before capture), with dynamo's recompile limit raised above
    the number of batch sizes and hitting it an error, never a silent eager run.
  * CUDA (Triton, the decode kernel): a row's blocks are split across thread blocks by
    its own block count only when no blocks are listed as "full" (with full blocks it
    tiles by the whole pool's length, leaving a row's blocks to one thread block), so every
    block is listed as partial and the ``mask_mod`` runs on all of them (a compare per
    score). Queries and keys may differ in dtype in the forward pass (an fp8 cache with
    bfloat16 queries); not run on a GPU yet: a failure to compile or capture falls back
    to the padded path (``cuda_graphs``).
  * CPU (a C++ template; needs AVX2 and a compiler): honours the block indices and the
    batch broadcast, applies the ``mask_mod`` to any block found (by a linear search, per
    block) in the partial list, so here a row's whole blocks are listed as full and only
    its last as partial; it wants the partial list as wide as the pool and some full list
    (its code does not compile without one: the GPU layout gets empty ones here, for the
    tests), float32, bfloat16 or float16 only, and the same dtype for queries and keys (no
    fp8 cache); its decoding template is steered clear of (``_CPU_OPTIONS``). Measured on
    the CPU (``bench/engine_v2.py --only decode``): one 8k-token row among 15 of 1.4k
    costs 1.29x all short in attention, the tokens' own ratio; padded, 17.8x.
- ``"gather"``: each row's whole table row is gathered and attended with a length mask
  (``padded_attention`` at the table's width): fixed shapes on any device and any storage
  dtype, no compiler, but it reads ``max_seq_len`` keys for every row. It is how the fixed-
  shape step runs on a CPU without compiling (tests), never what a GPU should run.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from glimpse.engine.batching.attention import padded_attention
from glimpse.engine.batching.kv_cache import BLOCK_TOKENS, gather_rows

__all__ = ["DecodeMask", "PagedBackend", "flex_available", "paged_decode_attention"]

PagedBackend = Literal["flex", "gather"]

#: Query rows per flex block: the library's default (a decode step has one query row; the
#: kernels' query tiles divide it).
_Q_BLOCK = 128
#: Compiled shapes allowed for flex (one per batch size, 35 at 256 slots): above dynamo's 8.
_RECOMPILE_LIMIT = 256
#: The CPU lowering picks its decoding template for one-token queries when the partition size
#: (128 by default) is a multiple of the KV block size; that template, when rows differ in block
#: count, scans each row's whole block list once per 128-token partition of the pool (cost
#: pool / 128 × the row's blocks: 22x all-short for one 8k row among 15 short, measured). A
#: partition size off the block grid keeps the general template, which walks each row's list once.
_CPU_OPTIONS: dict[str, Any] = {"PARTITION_SIZE": BLOCK_TOKENS + 1}


def flex_available(device: torch.device) -> bool:
    """Whether ``"flex"`` is the backend to pick by default on ``device``: CUDA with Triton.

    It compiles on the CPU too, but a CPU serves without CUDA graphs, so only tests and
    benchmarks ask for it there.
    """
    if device.type != "cuda" or importlib.util.find_spec("triton") is None:
        return False
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:  # torch < 2.5
        return False
    return True


@functools.cache
def _compiled_flex() -> Callable[..., torch.Tensor]:
    from torch.nn.attention.flex_attention import flex_attention

    compiled: Callable[..., torch.Tensor] = torch.compile(flex_attention, dynamic=False, fullgraph=True)
    return compiled


@dataclass(slots=True)
class _BlockLists:
    """flex's block lists of each row (one KV head and query block each): counts and indices."""

    partial_count: torch.Tensor  # [rows, 1, 1] int32
    partial: torch.Tensor  # [rows, 1, 1, width] int32
    full_count: torch.Tensor | None  # the same, for the blocks the mask skips (CPU layout)
    full: torch.Tensor | None


class DecodeMask:
    """The fixed buffers of one batch size's paged decode attention, updated in place each step.

    ``rows`` is the (padded) batch; a padding row has length 1 on the scratch block, as the
    padded path gives it. ``full_blocks`` picks the flex block layout (see the module
    docstring); by default the CPU's.
    """

    def __init__(
        self,
        rows: int,
        num_blocks: int,
        table_width: int,
        device: torch.device,
        backend: PagedBackend,
        *,
        full_blocks: bool | None = None,
    ) -> None:
        self.rows = rows
        self.backend = backend
        self.num_blocks = num_blocks
        #: Each row's attended length (its cached tokens and this step's one).
        self.lengths = torch.ones((rows,), dtype=torch.long, device=device)
        #: The rows' block tables, as the gather backend reads them (flex: its block lists).
        self.tables = torch.zeros(
            (rows, table_width if backend == "gather" else 0), dtype=torch.long, device=device
        )
        #: flex's ``BlockMask`` over the buffers below (``None`` for the gather backend).
        self.block_mask: Any = None
        self._lists: _BlockLists | None = None
        if backend == "flex":
            full = device.type == "cpu" if full_blocks is None else full_blocks
            self._build_block_mask(table_width, device, full)

    def _build_block_mask(self, table_width: int, device: torch.device, full: bool) -> None:
        from torch.nn.attention.flex_attention import BlockMask

        rows = self.rows

        def ones(*shape: int) -> torch.Tensor:
            return torch.ones(shape, dtype=torch.int32, device=device)

        # The CPU kernel checks that the partial list spans the pool; elsewhere the table is enough.
        width = self.num_blocks if device.type == "cpu" else table_width
        lists = _BlockLists(ones(rows, 1, 1), ones(rows, 1, 1, width), None, None)
        if full:
            lists.full_count, lists.full = ones(rows, 1, 1), ones(rows, 1, 1, table_width)
        elif device.type == "cpu":  # its template does not compile without full lists: empty ones
            lists.full_count, lists.full = ones(rows, 1, 1) * 0, ones(rows, 1, 1, 1)
        self._full = full
        self._lists = lists
        self._last = torch.zeros((rows,), dtype=torch.long, device=device)  # each row's last block
        self._tail = torch.ones((rows,), dtype=torch.long, device=device)  # its tokens in that block
        last, tail = self._last, self._tail

        def mask_mod(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
            # Any block but the row's last is whole; only that one's tail is hidden.
            return (kv // BLOCK_TOKENS != last[b]) | (kv % BLOCK_TOKENS < tail[b])

        self.block_mask = BlockMask.from_kv_blocks(
            lists.partial_count,
            lists.partial,
            lists.full_count,
            lists.full,
            BLOCK_SIZE=(_Q_BLOCK, BLOCK_TOKENS),
            mask_mod=mask_mod,
            seq_lengths=(1, self.num_blocks * BLOCK_TOKENS),
            compute_q_blocks=False,
        )

    def update(self, tables: torch.Tensor, lengths: torch.Tensor) -> None:
        """Take this step's ``lengths`` ``[rows]`` (long, on the device) and the first ``rows``
        rows of the device block ``tables`` (``PagedKVCache.tables``): copies in place only."""
        table = tables[: self.rows]
        self.lengths.copy_(lengths)
        lists = self._lists
        if lists is None:
            self.tables.copy_(table)
            return
        count = (lengths + BLOCK_TOKENS - 1) // BLOCK_TOKENS
        last_at = count - 1
        self._last.copy_(table.gather(1, last_at[:, None])[:, 0])
        self._tail.copy_(lengths - BLOCK_TOKENS * last_at)
        if self._full and lists.full_count is not None and lists.full is not None:
            lists.full_count.copy_(last_at.view(self.rows, 1, 1))
            lists.full[:, 0, 0].copy_(table)
            lists.partial[:, 0, 0, 0].copy_(self._last)
        else:
            lists.partial_count.copy_(count.view(self.rows, 1, 1))
            lists.partial[:, 0, 0, : table.shape[1]].copy_(table)


def paged_decode_attention(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    mask: DecodeMask,
    num_kv_heads: int,
    scaling: float,
) -> torch.Tensor:
    """One decode token per row: ``query`` ``[rows, heads, 1, dim]`` against a layer's paged
    ``keys``/``values`` (``[kv_heads, num_blocks, 16, dim]``), row ``i`` its first
    ``mask.lengths[i]`` tokens in its blocks. Returns ``[rows, 1, heads * dim]``; no host sync."""
    rows, heads, _, dim = query.shape
    if mask.backend == "gather":
        row_keys, row_values = gather_rows(keys, mask.tables), gather_rows(values, mask.tables)
        return padded_attention(query, row_keys, row_values, mask.lengths - 1, num_kv_heads, scaling)
    if query.device.type == "cpu" and keys.dtype != query.dtype:
        raise NotImplementedError(f"flex attention on the CPU needs {query.dtype} keys, not {keys.dtype}")
    pool = (1, num_kv_heads, mask.num_blocks * BLOCK_TOKENS, dim)
    options = _CPU_OPTIONS if query.device.type == "cpu" else None
    with torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT, fail_on_recompile_limit_hit=True):
        out = _compiled_flex()(
            query,
            keys.view(pool),
            values.view(pool),
            block_mask=mask.block_mask,
            scale=scaling,
            enable_gqa=True,
            kernel_options=options,
        )
    return out.transpose(1, 2).reshape(rows, 1, heads * dim)
