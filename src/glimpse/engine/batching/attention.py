"""Attention over the paged cache: each sequence by its own length, or the padded decode batch.

``ragged_attention`` is what every step runs: the step's tokens are packed (the
decode token of each running sequence, then each prefill chunk), and each
sequence's queries attend to its own keys up to its own length, so a step costs
the sum of the sequences' lengths, not the batch size times the longest. It is
one ``scaled_dot_product_attention`` call per sequence, over that sequence's keys
and values gathered from its blocks (``PagedKVCache.read``): plain, exact, and on
any device. A decode token needs no mask; a chunk of several tokens is causal, with
its mask offset by what is already cached (none when nothing is: the fused
kernels' own causal path, about three times faster on the CPU than a mask).

Grouped-query attention without repeating keys/values: for a decode token the
query heads that share a key/value head become that head's rows
(``[kv_heads, group, dim]``), for a chunk SDPA's ``enable_gqa``; keys and values
are never repeated per query head.

A cache stored narrower than the model (fp8) is read sequence by sequence: each
sequence's keys and values are cast to the query's dtype just before its SDPA call
(``.to`` returns the tensor itself when the dtypes match), so the full-precision
copy never outlives one call.

``padded_attention`` is the fixed-shape decode step that CUDA graphs replay: one
call over sequences ``0 .. n-1`` up to a common (bucketed) length with a mask that
hides each row's tail. It reads up to the longest length for every row, which is
why only the graph path uses it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812

__all__ = ["Span", "padded_attention", "ragged_attention"]


@dataclass(slots=True, frozen=True)
class Span:
    """One sequence's tokens in a packed step."""

    slot: int  # its cache slot
    offset: int  # index of its first token in the packed step
    count: int  # its tokens in this step
    cached: int  # its tokens already in the cache before this step


def ragged_attention(
    query: torch.Tensor,
    spans: Sequence[Span],
    read: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
    num_kv_heads: int,
    scaling: float,
) -> torch.Tensor:
    """``query`` ``[heads, tokens, dim]`` (rotated) against each span's keys and values, ``read(i)``
    for ``spans[i]`` (``[kv_heads, cached + count, dim]``, this step's keys included); returns
    ``[heads, tokens, dim]``."""
    heads, _, dim = query.shape
    group = heads // num_kv_heads
    outputs = []
    for index, span in enumerate(spans):
        total = span.cached + span.count
        rows = query[:, span.offset : span.offset + span.count]
        held_keys, held_values = read(index)
        seq_keys = held_keys[:, :total].to(query.dtype)
        seq_values = held_values[:, :total].to(query.dtype)
        if span.count == 1:  # a decode token sees all its keys: no mask
            out = F.scaled_dot_product_attention(
                rows.reshape(num_kv_heads, group, dim), seq_keys, seq_values, scale=scaling
            )
        else:
            # A chunk: causal, offset by what is cached before it. From nothing cached that is
            # the plain causal square, which the fused kernels take without a mask.
            mask = None
            if span.cached:
                seen = span.cached + torch.arange(span.count, device=query.device)
                mask = torch.arange(total, device=query.device)[None, :] <= seen[:, None]
            out = F.scaled_dot_product_attention(
                rows[None],
                seq_keys[None],
                seq_values[None],
                attn_mask=mask,
                is_causal=mask is None,
                scale=scaling,
                enable_gqa=True,
            )
        outputs.append(out.reshape(heads, span.count, dim))
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)


def padded_attention(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    write_at: torch.Tensor,
    num_kv_heads: int,
    scaling: float,
) -> torch.Tensor:
    """One decode token per sequence ``0 .. n-1``: ``query`` ``[n, heads, 1, dim]`` against
    ``keys``/``values`` ``[n, kv_heads, kv_len, dim]``; row ``i`` sees its first ``write_at[i] + 1``
    keys. Returns ``[n, 1, heads * dim]``. No host sync, so a CUDA graph can capture it."""
    n, heads, _, dim = query.shape
    kv_len = keys.shape[2]
    mask = torch.arange(kv_len, device=write_at.device)[None, :] <= write_at[:, None]
    rows = query.reshape(n, num_kv_heads, heads // num_kv_heads, dim)
    keys, values = keys.to(query.dtype), values.to(query.dtype)  # an fp8 cache, read back
    out = F.scaled_dot_product_attention(rows, keys, values, attn_mask=mask[:, None, None, :], scale=scaling)
    return out.reshape(n, 1, heads * dim)
