"""How many sequences the batch holds, sized from the machine unless the settings say.

On a GPU the KV cache is the one thing that grows with the batch: its pool holds
the blocks of ``max_seq_len`` tokens for every slot (``kv_cache.pool_blocks``, plus
the scratch and copy-on-write blocks), allocated at start-up, at the cache's storage
size (``kv_cache_dtype fp8``: half a bfloat16 one, so up to twice the slots). Every
running sequence can thus always get its blocks, whatever the prefix cache keeps
in the rest: the cache changes no admission. So the
batch is as many slots as fit the memory left after the weights (already loaded
when this runs), one step's activations (the prefill budget through the text
model and the vision tower, the sampled rows' logits, in the model's dtype) and,
with CUDA graphs, their pool (one decode step's activations per captured batch
size, shared: with attention paged by each row's length, ``paged_attention``, no
activation grows with the attended length and there is one graph per batch size).
The padded fallback's gathered keys and values (``cuda_graphs``: every row ×
``max_seq_len`` at the largest length bucket) are not counted. 10 % of the free
memory is kept back for the allocator's fragmentation. An explicit
``max_batch_size`` still wins, lowered (with a warning) only when it cannot fit.

On the CPU the batch stays small (``CPU_BATCH``): a step there costs about its
batch size in time, so a bigger batch only lengthens every stream's steps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from glimpse.engine.batching.cuda_graphs import batch_buckets
from glimpse.engine.batching.kv_cache import BLOCK_TOKENS, CacheGeometry, pool_blocks
from glimpse.errors import ModelLoadError

__all__ = ["CPU_BATCH", "MAX_AUTO_BATCH", "BatchSize", "size_batch", "step_activation_bytes"]

logger = logging.getLogger(__name__)

#: The batch on the CPU when the settings leave it unset.
CPU_BATCH = 16
#: The most slots sized automatically on a GPU (vLLM's default ``max_num_seqs``).
MAX_AUTO_BATCH = 256
#: Free memory kept back for fragmentation and what this estimate misses.
_HEADROOM = 0.10
#: Floor of the activation reserve: cuBLAS workspaces, the allocator's rounding.
_MIN_RESERVE = 512 * 2**20


@dataclass(slots=True, frozen=True)
class BatchSize:
    """The chosen batch and why, for the start-up log."""

    slots: int
    kv_bytes: int
    reserve_bytes: int
    reason: str


def step_activation_bytes(model_config: Any, tokens: int, sampled_rows: int, element_bytes: int) -> int:
    """Peak activations of one step over ``tokens`` tokens (one decoder layer at a time, as inference
    frees each layer's before the next), with ``sampled_rows`` rows of logits and the vision tower
    encoding that many tokens' images (each image token is ``merge²`` patches)."""
    text = getattr(model_config, "text_config", model_config)
    hidden = int(text.hidden_size)
    ffn = int(getattr(text, "intermediate_size", 4 * hidden))
    vocab = int(text.vocab_size)
    # residual + normed + q/k/v/attention output (4 × hidden) and gate/up/activated (3 × ffn)
    text_bytes = tokens * (4 * hidden + 3 * ffn) * element_bytes
    # logits in the model's dtype and in float32 for the sampler, with one working copy
    logits_bytes = sampled_rows * vocab * (element_bytes + 2 * 4)
    vision = getattr(model_config, "vision_config", None)
    vision_bytes = 0
    if vision is not None:
        merge = int(getattr(vision, "spatial_merge_size", 2))
        v_hidden = int(vision.hidden_size)
        v_ffn = int(getattr(vision, "intermediate_size", 4 * v_hidden))
        vision_bytes = tokens * merge * merge * (4 * v_hidden + 3 * v_ffn) * element_bytes
    return text_bytes + logits_bytes + vision_bytes


def size_batch(
    requested: int | None,
    *,
    geometry: CacheGeometry,
    model_config: Any,
    max_seq_len: int,
    prefill_tokens: int,
    free_bytes: int | None,
    cuda_graphs: bool,
) -> BatchSize:
    """The slots to allocate: ``requested`` if it fits (or on the CPU), else what fits (at most 256).

    ``free_bytes`` is the device's free memory after the weights (``None`` on the CPU).
    Raises ``ModelLoadError`` when not even one slot fits: the server could never answer.
    """
    block_bytes = geometry.bytes_per_token * BLOCK_TOKENS
    fixed = pool_blocks(0, max_seq_len) * block_bytes  # scratch and copy-on-write blocks
    per_slot = (pool_blocks(1, max_seq_len) - pool_blocks(0, max_seq_len)) * block_bytes
    if free_bytes is None:
        slots = requested or CPU_BATCH
        reason = "as set" if requested else "the CPU default"
        return BatchSize(slots, fixed + slots * per_slot, 0, reason)
    element = torch.empty((), dtype=geometry.dtype).element_size()
    ceiling = requested or MAX_AUTO_BATCH
    reserve = max(
        _MIN_RESERVE, step_activation_bytes(model_config, prefill_tokens + ceiling, ceiling, element)
    )
    if cuda_graphs:  # the graphs' pool holds one decode step's activations, shared by every size
        reserve += step_activation_bytes(model_config, max(batch_buckets(ceiling)), ceiling, element)
    usable = int(free_bytes * (1 - _HEADROOM)) - reserve - fixed
    fits = max(0, usable // max(1, per_slot))
    if fits < 1:
        raise ModelLoadError(
            f"Not enough GPU memory for even one KV-cache slot ({per_slot / 2**30:.2f} GiB for "
            f"max_seq_len tokens, {reserve / 2**30:.2f} GiB kept for a step's activations; "
            f"{free_bytes / 2**30:.1f} GiB free). Lower GLIMPSE_ENGINE__MAX_SEQ_LEN or "
            "GLIMPSE_ENGINE__PREFILL_TOKENS_PER_STEP."
        )
    slots = min(ceiling, fits)
    if requested is None:
        reason = "sized from free GPU memory" + (f" (capped at {MAX_AUTO_BATCH})" if slots == ceiling else "")
    elif slots < requested:
        reason = f"lowered from {requested}: no more fit the free GPU memory"
        logger.warning(
            "KV cache for %d slots of %d tokens does not fit the free GPU memory; using %d slots",
            requested,
            max_seq_len,
            slots,
        )
    else:
        reason = "as set"
    return BatchSize(slots, fixed + slots * per_slot, reserve, reason)
