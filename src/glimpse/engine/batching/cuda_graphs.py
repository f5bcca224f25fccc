"""Decode-only steps as CUDA graph replays: one launch per step instead of hundreds.

The scheduler uses them only for steps with no prefill while no prompt is part-way
through its prefill (then every used slot is decoding, in slots ``0 .. n-1``);
steps with prefill run the ragged forward eagerly.

A decode step of the real model is ~40 layers of small kernels; launched one by
one from Python they cost more than the step's memory traffic (the baseline's
41 ms a step against ~6 ms of weight reads). A CUDA graph records the step's
kernels once per shape and replays them with one launch.

Shapes must repeat for that, so the batch is padded up to a bucket (1, 2, 4, 8,
then steps of 8) and the attended length is rounded up to a length bucket
(``kv_bucket``, then doubling up to ``max_seq_len``: a step reads at most twice the
longest sequence's keys, and there are few lengths to capture). Padding rows are
free slots (running sequences are compacted into slots ``0 .. n-1``), whose block
table rows all point at the scratch block (``block_pool.SCRATCH_BLOCK``): a padding
row writes its key at position 0 there, where no sequence's keys are, and its mask
lets it read that one key, so its (dropped) output is finite. Rows never mix
(attention, norms and projections are per row), so what a padding row reads changes
no real row. Inputs live in fixed buffers that the graph reads, the block tables
included (``PagedKVCache.tables``, edited in place); each step copies the real values
in, replays, and copies the logits out.

Every (batch bucket, length bucket) is captured at start-up (``capture_all``),
before any request, so no request pays for a capture and the graphs' memory is
taken before traffic (the batch sizing keeps room for it, ``sizing``); the count,
seconds and memory are logged. A step whose shape was not captured runs eagerly.

With ``capture=False`` the same padded path runs eagerly: that is how the padding
logic is tested on machines without a GPU. A capture that fails (a kernel that
cannot be captured, an out-of-memory) turns graphs off for good and the step
runs eagerly, with one warning in the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from glimpse.engine.batching.kv_cache import PagedKVCache

if TYPE_CHECKING:
    from glimpse.engine.batching.runner import Glm4vRunner

__all__ = ["DecodeGraphs", "batch_buckets", "length_buckets"]

logger = logging.getLogger(__name__)


def batch_buckets(max_batch: int) -> tuple[int, ...]:
    """Padded batch sizes: 1, 2, 4, 8, then every 8, and ``max_batch`` itself."""
    sizes = {b for b in (1, 2, 4) if b < max_batch}
    sizes.update(range(8, max_batch, 8))
    sizes.add(max_batch)
    return tuple(sorted(sizes))


def length_buckets(max_seq_len: int, first: int) -> tuple[int, ...]:
    """Attended lengths: ``first``, doubling, and ``max_seq_len`` itself."""
    sizes = []
    length = max(1, first)
    while length < max_seq_len:
        sizes.append(length)
        length *= 2
    sizes.append(max_seq_len)
    return tuple(sizes)


@dataclass(slots=True)
class _Buffers:
    ids: torch.Tensor  # [nb, 1]
    mrope: torch.Tensor  # [3, nb, 1]
    write_at: torch.Tensor  # [nb]


@dataclass(slots=True)
class _Captured:
    graph: Any  # torch.cuda.CUDAGraph
    logits: torch.Tensor  # the graph's output buffer [nb, vocab]


class DecodeGraphs:
    """One captured decode step per (padded batch, attended length), replayed each step."""

    def __init__(
        self, runner: Glm4vRunner, cache: PagedKVCache, *, kv_bucket: int = 256, capture: bool = True
    ) -> None:
        self._runner = runner
        self._cache = cache
        self._buckets = batch_buckets(cache.max_slots)
        self.lengths = length_buckets(cache.max_seq_len, kv_bucket)
        self._capture_enabled = capture
        self._buffers: dict[int, _Buffers] = {}
        self._graphs: dict[tuple[int, int], _Captured] = {}
        self._pool: Any = torch.cuda.graph_pool_handle() if capture else None
        self.disabled: str | None = None
        self.replays = 0

    def _bucket(self, n: int) -> int:
        return next(b for b in self._buckets if b >= n)

    def attended_length(self, needed: int) -> int:
        """The length bucket a step that must read ``needed`` keys per row attends to."""
        return next(length for length in self.lengths if length >= needed)

    def capture_all(self) -> None:
        """Capture every (batch bucket, length bucket) now, before any sequence holds a slot.

        Every row of the warm-up and captured steps is a padding row, writing into the scratch
        block only while no table lists another block: why this runs while the cache is empty.
        """
        if not self._capture_enabled or self.disabled is not None:
            return
        assert self._cache.used == 0, "capture only while no sequence holds a slot"
        started = time.monotonic()
        before = torch.cuda.memory_reserved(self._runner.device)
        for nb in self._buckets:
            buffers = self._buffers_for(nb)
            for kv_len in self.lengths:
                if self._capture(nb, kv_len, buffers) is None:
                    return  # disabled, with its warning
        logger.info(
            "captured %d decode graphs (batch %s x attended length %s) in %.1f s, %.0f MiB",
            len(self._graphs),
            "/".join(map(str, self._buckets)),
            "/".join(map(str, self.lengths)),
            time.monotonic() - started,
            (torch.cuda.memory_reserved(self._runner.device) - before) / 2**20,
        )

    def _buffers_for(self, nb: int) -> _Buffers:
        buffers = self._buffers.get(nb)
        if buffers is None:
            device = self._runner.device
            buffers = _Buffers(
                ids=torch.zeros((nb, 1), dtype=torch.long, device=device),
                mrope=torch.zeros((3, nb, 1), dtype=torch.long, device=device),
                write_at=torch.zeros((nb,), dtype=torch.long, device=device),
            )
            self._buffers[nb] = buffers
        return buffers

    def _fill(
        self,
        buffers: _Buffers,
        token_ids: Sequence[int],
        positions: Sequence[tuple[int, int, int]],
        lengths: Sequence[int],
    ) -> None:
        pad = buffers.ids.shape[0] - len(token_ids)
        ids = torch.tensor([*token_ids, *([0] * pad)], dtype=torch.long)
        mrope = torch.tensor([*positions, *([(0, 0, 0)] * pad)], dtype=torch.long).T
        write_at = torch.tensor([*lengths, *([0] * pad)], dtype=torch.long)  # padding: the scratch block
        buffers.ids.copy_(ids[:, None], non_blocking=True)
        buffers.mrope.copy_(mrope[:, :, None], non_blocking=True)
        buffers.write_at.copy_(write_at, non_blocking=True)

    def run(
        self,
        token_ids: Sequence[int],
        positions: Sequence[tuple[int, int, int]],
        lengths: Sequence[int],
        kv_len: int,
    ) -> torch.Tensor | None:
        """Logits ``[n, vocab]`` of this step, or ``None`` to let the caller run it eagerly."""
        if self.disabled is not None:
            return None
        n = len(token_ids)
        nb = self._bucket(n)
        buffers = self._buffers_for(nb)
        self._fill(buffers, token_ids, positions, lengths)
        if not self._capture_enabled:
            logits = self._runner.decode_core(
                self._cache, buffers.ids, buffers.mrope, buffers.write_at, kv_len
            )
            return logits[:n]
        captured = self._graphs.get((nb, kv_len))
        if captured is None:  # not a captured shape (never, after capture_all): eager
            return None
        captured.graph.replay()
        self.replays += 1
        return captured.logits[:n].clone()

    def _capture(self, nb: int, kv_len: int, buffers: _Buffers) -> _Captured | None:
        core = self._runner.decode_core
        args = (self._cache, buffers.ids, buffers.mrope, buffers.write_at, kv_len)
        try:
            side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
            side.wait_stream(torch.cuda.current_stream())
            # Warm-up on a side stream, as capture requires. It writes this step's own
            # keys/values at this step's positions, which the replay writes again.
            with torch.cuda.stream(side), torch.inference_mode():
                core(*args)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool), torch.inference_mode():
                logits = core(*args)
        except Exception as exc:  # noqa: BLE001 - any capture failure means: run eagerly from now on
            self.disabled = f"{type(exc).__name__}: {exc}"
            logger.warning("CUDA graph capture failed, decoding eagerly from now on: %s", self.disabled)
            return None
        captured = _Captured(graph, logits)
        self._graphs[(nb, kv_len)] = captured
        logger.debug("captured decode graph for batch %d, %d cached tokens", nb, kv_len)
        return captured
