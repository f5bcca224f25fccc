"""Decode-only steps as CUDA graph replays: one launch per step instead of hundreds.

The scheduler uses them only for steps with no prefill while no prompt is part-way
through its prefill (then every used slot is decoding, in slots ``0 .. n-1``);
steps with prefill run the ragged forward eagerly.

A decode step of the real model is ~40 layers of small kernels; launched one by
one from Python they cost more than the step's memory traffic (the baseline's
41 ms a step against ~6 ms of weight reads). A CUDA graph records the step's
kernels once per shape and replays them with one launch.

Shapes must repeat for that, so the batch is padded up to a bucket (1, 2, 4, 8,
then steps of 8). Attention is paged by each row's own length
(``paged_attention``: the rows' lengths and block tables are fixed-size inputs, no
shape depends on the KV length), so there is one graph per batch bucket and a row
reads only its own blocks. Padding rows are free slots (running sequences are
compacted into slots ``0 .. n-1``), whose block table rows all point at the scratch
block (``block_pool.SCRATCH_BLOCK``): a padding row writes its key at position 0
there, where no sequence's keys are, and reads that one key, so its (dropped) output
is finite. Rows never mix (attention, norms and projections are per row), so what a
padding row reads changes no real row. Inputs live in fixed buffers that the graph
reads, the block tables included (``PagedKVCache.tables``, edited in place); each
step copies the real values in, replays, and copies the logits out.

Where the paged kernel is unavailable (``paged_attention.flex_available``: CUDA with
Triton and torch's flex attention) or fails to compile or capture, the step falls back
to the padded path (``attention.padded_attention``), logged once: every row reads up
to a common length rounded up to a length bucket (``kv_bucket``, then doubling up to
``max_seq_len``: at most twice the longest sequence's keys), and every (batch bucket,
length bucket) is a graph.

Every graph is captured at start-up (``capture_all``), before any request, so no
request pays for a capture (or a compile) and the graphs' memory is taken before
traffic (the batch sizing keeps room for it, ``sizing``); the path, count, seconds
and memory are logged. A step whose shape was not captured runs eagerly.

With ``capture=False`` the same fixed-shape step runs eagerly: that is how its
padding and buffer logic is tested on machines without a GPU, through the paged
path's gather backend on a CPU (no compiler needed) unless another is asked for. A
capture that fails on the padded path too (a kernel that cannot be captured, an
out-of-memory) turns graphs off for good and the step runs eagerly, with one warning
in the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

from glimpse.engine.batching.kv_cache import PagedKVCache
from glimpse.engine.batching.paged_attention import DecodeMask, flex_available

if TYPE_CHECKING:
    from glimpse.engine.batching.runner import Glm4vRunner

__all__ = ["DecodeAttention", "DecodeGraphs", "batch_buckets", "length_buckets", "resolve_attention"]

logger = logging.getLogger(__name__)

#: How the fixed-shape step attends: paged by each row's length (``"flex"``, ``"gather"``: see
#: ``paged_attention``) or ``"padded"`` to a length bucket; ``"auto"``: flex where available, else
#: gather on a CPU and padded elsewhere.
DecodeAttention = Literal["auto", "flex", "gather", "padded"]


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


def resolve_attention(attention: DecodeAttention, device: torch.device) -> DecodeAttention:
    """The backend ``"auto"`` stands for on ``device``."""
    if attention != "auto":
        return attention
    if flex_available(device):
        return "flex"
    return "gather" if device.type == "cpu" else "padded"


@dataclass(slots=True)
class _Buffers:
    ids: torch.Tensor  # [nb, 1]
    mrope: torch.Tensor  # [3, nb, 1]
    write_at: torch.Tensor  # [nb]
    mask: DecodeMask | None  # the paged path's lengths and block lists; None on the padded path


@dataclass(slots=True)
class _Captured:
    graph: Any  # torch.cuda.CUDAGraph
    logits: torch.Tensor  # the graph's output buffer [nb, vocab]


class DecodeGraphs:
    """One captured decode step per padded batch (per attended length too on the padded path)."""

    def __init__(
        self,
        runner: Glm4vRunner,
        cache: PagedKVCache,
        *,
        kv_bucket: int = 256,
        capture: bool = True,
        attention: DecodeAttention = "auto",
    ) -> None:
        self._runner = runner
        self._cache = cache
        self._buckets = batch_buckets(cache.max_slots)
        #: The padded path's length buckets (unused on the paged path).
        self.lengths = length_buckets(cache.max_seq_len, kv_bucket)
        #: The path steps take: ``"flex"`` or ``"gather"`` (paged), or ``"padded"``.
        self.attention = resolve_attention(attention, runner.device)
        self._capture_enabled = capture
        self._buffers: dict[int, _Buffers] = {}
        # (batch bucket, attended length): the length is 0 on the paged path
        self._graphs: dict[tuple[int, int], _Captured] = {}
        self._pool: Any = torch.cuda.graph_pool_handle() if capture else None
        self.disabled: str | None = None
        self.replays = 0

    @property
    def paged(self) -> bool:
        return self.attention != "padded"

    def _bucket(self, n: int) -> int:
        return next(b for b in self._buckets if b >= n)

    def attended_length(self, needed: int) -> int:
        """The length a step that must read ``needed`` keys per row attends to: 0 on the paged
        path (each row its own), else the length bucket."""
        if self.paged:
            return 0
        return next(length for length in self.lengths if length >= needed)

    def _shapes(self) -> list[tuple[int, int]]:
        if self.paged:
            return [(nb, 0) for nb in self._buckets]
        return [(nb, kv_len) for nb in self._buckets for kv_len in self.lengths]

    def capture_all(self) -> None:
        """Capture every shape now, before any sequence holds a slot.

        Every row of the warm-up and captured steps is a padding row, writing into the scratch
        block only while no table lists another block: why this runs while the cache is empty.
        On the paged path the warm-up also compiles its kernel for each batch bucket.
        """
        if not self._capture_enabled or self.disabled is not None:
            return
        assert self._cache.used == 0, "capture only while no sequence holds a slot"
        started = time.monotonic()
        before = torch.cuda.memory_reserved(self._runner.device)
        try:
            for nb, kv_len in self._shapes():
                self._capture(nb, kv_len, self._buffers_for(nb))
        except Exception as exc:  # noqa: BLE001 - any capture failure means: another path, or eager
            self._graphs.clear()
            reason = f"{type(exc).__name__}: {exc}"
            if self.paged:
                logger.warning(
                    "paged decode attention (%s) could not be captured, falling back to the padded "
                    "path (length buckets): %s",
                    self.attention,
                    reason,
                )
                self.attention = "padded"
                self._buffers.clear()
                self.capture_all()
                return
            self.disabled = reason
            logger.warning("CUDA graph capture failed, decoding eagerly from now on: %s", self.disabled)
            return
        logger.info(
            "captured %d decode graphs (%s attention; batch %s%s) in %.1f s, %.0f MiB",
            len(self._graphs),
            "paged by each row's length, " + self.attention if self.paged else "padded",
            "/".join(map(str, self._buckets)),
            "" if self.paged else " x attended length " + "/".join(map(str, self.lengths)),
            time.monotonic() - started,
            (torch.cuda.memory_reserved(self._runner.device) - before) / 2**20,
        )

    def _buffers_for(self, nb: int) -> _Buffers:
        buffers = self._buffers.get(nb)
        if buffers is None:
            device = self._runner.device
            mask = None
            if self.attention in ("flex", "gather"):
                width = self._cache.tables.shape[1]
                backend: Literal["flex", "gather"] = "flex" if self.attention == "flex" else "gather"
                mask = DecodeMask(nb, self._cache.num_blocks, width, device, backend)
            buffers = _Buffers(
                ids=torch.zeros((nb, 1), dtype=torch.long, device=device),
                mrope=torch.zeros((3, nb, 1), dtype=torch.long, device=device),
                write_at=torch.zeros((nb,), dtype=torch.long, device=device),
                mask=mask,
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

    def _core(self, buffers: _Buffers, kv_len: int) -> torch.Tensor:
        """The step's tensor work on ``buffers``: what is captured, or run eagerly."""
        attention = buffers.mask if buffers.mask is not None else kv_len
        return self._runner.decode_core(self._cache, buffers.ids, buffers.mrope, buffers.write_at, attention)

    def run(
        self,
        token_ids: Sequence[int],
        positions: Sequence[tuple[int, int, int]],
        lengths: Sequence[int],
    ) -> torch.Tensor | None:
        """Logits ``[n, vocab]`` of this step (``lengths``: each row's cached tokens), or ``None``
        to let the caller run it eagerly."""
        if self.disabled is not None:
            return None
        n = len(token_ids)
        nb = self._bucket(n)
        kv_len = self.attended_length(max(lengths) + 1)
        buffers = self._buffers_for(nb)
        self._fill(buffers, token_ids, positions, lengths)
        if not self._capture_enabled:
            return self._core(buffers, kv_len)[:n]
        captured = self._graphs.get((nb, kv_len))
        if captured is None:  # not a captured shape (never, after capture_all): eager
            return None
        captured.graph.replay()
        self.replays += 1
        return captured.logits[:n].clone()

    def _capture(self, nb: int, kv_len: int, buffers: _Buffers) -> _Captured:
        side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream())
        # Warm-up on a side stream, as capture requires (and the paged kernel's compile). It
        # writes this step's own keys/values at this step's positions, which the replay writes again.
        with torch.cuda.stream(side), torch.inference_mode():
            self._core(buffers, kv_len)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool), torch.inference_mode():
            logits = self._core(buffers, kv_len)
        captured = _Captured(graph, logits)
        self._graphs[(nb, kv_len)] = captured
        logger.debug("captured decode graph for batch %d, attended length %d (0: paged)", nb, kv_len)
        return captured
