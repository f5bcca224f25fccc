"""A preallocated, per-slot key/value cache for the running sequences.

``generate()`` grows its cache by concatenation, which reallocates and copies
every layer's keys and values at every step. Here each running sequence owns one
*slot*: a fixed ``max_seq_len`` row of a tensor allocated once at start-up, so a
step writes its new keys/values in place (one per decoding sequence, a chunk per
prefilling one) and allocates nothing; attention then reads each slot's own
``slot_view`` up to that sequence's length.

Running sequences are kept *compacted* in slots ``0 .. n-1``: when a sequence
leaves, the last one is moved into its place. The padded decode path that CUDA
graphs replay reads the plain view ``keys[:n, :, :kv_len]``, with no gather, and
its shape depends only on ``n`` and ``kv_len`` (pad ``n`` and round ``kv_len`` up
to buckets).

Layout per layer: ``[max_slots, num_kv_heads, max_seq_len, head_dim]``, the
``[batch, heads, length, dim]`` layout that ``scaled_dot_product_attention``
takes without a transpose.

Storage may be narrower than the model's dtype: ``float8_e4m3fn`` (``kv_cache_dtype
fp8``) halves a bfloat16 cache, so twice the tokens fit. Every write casts to the
storage dtype, saturating at ±448 as vLLM's fp8 cache does, with a per-tensor scale
of 1.0 (vLLM's default when no calibrated scales come with the checkpoint); attention
casts each slice it reads back to the query's dtype (``attention``), a no-op when
storage is the model's dtype. Allocation, writes and row copies go through a ``uint8``
view of the fp8 buffers, so they need only byte kernels (torch gained float8 kernels
op by op, and ``torch>=2.4`` is allowed); only the casts touch float8. Views
(``view``, ``slot_view``) return what is stored, fp8 included.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["FP8_KV_DTYPE", "CacheGeometry", "SlotKVCache", "kv_storage_dtype"]

#: The storage of ``kv_cache_dtype fp8``: 4 exponent and 3 mantissa bits, finite values only.
FP8_KV_DTYPE = torch.float8_e4m3fn
_FP8_MAX = torch.finfo(FP8_KV_DTYPE).max


def kv_storage_dtype(kv_cache_dtype: str) -> torch.dtype | None:
    """The storage dtype a ``kv_cache_dtype`` setting names (``None``: the model's own dtype)."""
    if kv_cache_dtype == "auto":
        return None
    if kv_cache_dtype == "fp8":
        return FP8_KV_DTYPE
    raise ValueError(f"unknown kv_cache_dtype {kv_cache_dtype!r}")


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


class SlotKVCache:
    """``max_slots`` sequences of at most ``max_seq_len`` tokens each, allocated once.

    Not thread-safe: only the engine thread touches it.
    """

    def __init__(self, geometry: CacheGeometry, max_slots: int, max_seq_len: int) -> None:
        if max_slots < 1 or max_seq_len < 1:
            raise ValueError("max_slots and max_seq_len must be positive")
        self.geometry = geometry
        self.max_slots = max_slots
        self.max_seq_len = max_seq_len
        shape = (max_slots, geometry.num_kv_heads, max_seq_len, geometry.head_dim)
        stored = geometry.stored_dtype
        # zero bytes are fp8 zeros too
        self.keys = [
            torch.zeros(shape, dtype=_bits_dtype(stored), device=geometry.device).view(stored)
            for _ in range(geometry.num_layers)
        ]
        self.values = [
            torch.zeros(shape, dtype=_bits_dtype(stored), device=geometry.device).view(stored)
            for _ in range(geometry.num_layers)
        ]
        self._fp8 = stored == FP8_KV_DTYPE
        # Host-side copy of each slot's length, so scheduling never syncs with the device.
        self._lengths: list[int] = []

    @property
    def used(self) -> int:
        return len(self._lengths)

    @property
    def free(self) -> int:
        return self.max_slots - len(self._lengths)

    @property
    def scratch_position(self) -> int:
        """The last row of every slot, where the padded decode path's padding rows write (``cuda_graphs``).

        Padding rows are free slots, and free slots hold the prefix cache's entries: this row
        is in none of them, since a finished sequence's keys stop before it (its last token
        is sampled, never written: at most ``max_seq_len - 1``) and ``PrefixCache.keep``
        indexes no block that reaches it. A sequence that takes the slot writes each row
        before it reads it, so what a padding row left here is never read either.
        """
        return self.max_seq_len - 1

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def length(self, slot: int) -> int:
        return self._lengths[slot]

    def lengths(self) -> list[int]:
        return list(self._lengths)

    def allocate(self, prompt_kv: Sequence[tuple[torch.Tensor, torch.Tensor]] = ()) -> int:
        """Take the next free slot, empty or filled with a prefilled prompt's keys and values.

        ``prompt_kv[layer]`` is ``(keys, values)`` of shape ``[1, kv_heads, length, head_dim]``.
        """
        if self.free == 0:
            raise RuntimeError("no free cache slot")
        if not prompt_kv:
            self._lengths.append(0)
            return len(self._lengths) - 1
        if len(prompt_kv) != self.geometry.num_layers:
            raise ValueError(f"expected {self.geometry.num_layers} layers, got {len(prompt_kv)}")
        length = int(prompt_kv[0][0].shape[-2])
        if length > self.max_seq_len:
            raise ValueError(f"prompt of {length} tokens exceeds the slot length {self.max_seq_len}")
        slot = len(self._lengths)
        rows = (slot, slice(None), slice(None, length))
        for layer, (keys, values) in enumerate(prompt_kv):
            self._put(self.keys[layer], rows, keys[0])
            self._put(self.values[layer], rows, values[0])
        self._lengths.append(length)
        return slot

    def allocate_with(self, length: int) -> int:
        """Take the next free slot, whose first ``length`` rows already hold the sequence's keys, values."""
        if self.free == 0:
            raise RuntimeError("no free cache slot")
        if not 0 <= length <= self.max_seq_len:
            raise ValueError(f"{length} cached tokens do not fit a slot of {self.max_seq_len}")
        self._lengths.append(length)
        return len(self._lengths) - 1

    def release(self, slot: int, keep: bool = False) -> int | None:
        """Free ``slot``; returns the slot whose sequence moved into it, if one did.

        Running sequences stay in slots ``0 .. n-1``, so the last one moves into the hole.
        With ``keep``, the freed rows are swapped into the last slot rather than overwritten,
        so they stay readable (by the prefix cache) in what is now the first free slot.
        """
        last = len(self._lengths) - 1
        if not 0 <= slot <= last:
            raise IndexError(f"slot {slot} is not in use")
        if slot == last:
            self._lengths.pop()
            return None
        length = self._lengths[last]
        if keep:
            self.swap_rows(slot, last, self._lengths[slot], length)
        else:
            self.copy_rows(last, slot, length)
        self._lengths[slot] = length
        self._lengths.pop()
        return last

    def copy_rows(self, source: int, target: int, length: int) -> None:
        """Copy the first ``length`` keys and values of slot ``source`` into slot ``target``, every layer."""
        if length <= 0 or source == target:
            return
        for tensor in self._buffers():
            tensor[target, :, :length].copy_(tensor[source, :, :length])

    def swap_rows(self, a: int, b: int, length_a: int, length_b: int) -> None:
        """Exchange the first ``length_a`` rows of slot ``a`` with the first ``length_b`` of slot ``b``."""
        if a == b or (length_a <= 0 and length_b <= 0):
            return
        for tensor in self._buffers():
            held = tensor[a, :, :length_a].clone()
            tensor[a, :, :length_b].copy_(tensor[b, :, :length_b])
            tensor[b, :, :length_a].copy_(held)

    def write_step(
        self, layer: int, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor
    ) -> None:
        """Write one new key/value per running slot at ``positions`` (``[n]``, on the device).

        ``keys``/``values`` have shape ``[n, kv_heads, 1, head_dim]`` for slots ``0 .. n-1``.
        """
        rows = torch.arange(keys.shape[0], device=positions.device)
        # Advanced indices around a slice put the batch dimension first: [n, kv_heads, head_dim].
        self._put(self.keys[layer], (rows, slice(None), positions), keys[:, :, 0])
        self._put(self.values[layer], (rows, slice(None), positions), values[:, :, 0])

    def write(
        self,
        layer: int,
        keys: torch.Tensor,
        values: torch.Tensor,
        slots: torch.Tensor,
        positions: torch.Tensor,
    ) -> None:
        """Write packed tokens: ``keys[i]`` (``[kv_heads, head_dim]``) at ``positions[i]`` of ``slots[i]``."""
        self._put(self.keys[layer], (slots, slice(None), positions), keys)
        self._put(self.values[layer], (slots, slice(None), positions), values)

    def slot_view(self, layer: int, slot: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``length`` keys and values of one slot, ``[kv_heads, length, head_dim]``, not copied."""
        return self.keys[layer][slot, :, :length], self.values[layer][slot, :, :length]

    def grow(self, slot: int, count: int) -> None:
        """Record that ``slot`` gained ``count`` tokens (after a step wrote them)."""
        if self._lengths[slot] + count > self.max_seq_len:
            raise RuntimeError(f"slot {slot} is full")
        self._lengths[slot] += count

    def view(self, layer: int, n: int, kv_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of slots ``0 .. n-1`` up to ``kv_len`` tokens, without copying."""
        return self.keys[layer][:n, :, :kv_len], self.values[layer][:n, :, :kv_len]

    def advance(self, n: int) -> None:
        """Record that slots ``0 .. n-1`` each gained one token (after a decode step)."""
        for slot in range(n):
            if self._lengths[slot] >= self.max_seq_len:
                raise RuntimeError(f"slot {slot} is full")
            self._lengths[slot] += 1

    def _put(self, buffer: torch.Tensor, index: tuple[Any, ...], new: torch.Tensor) -> None:
        """``buffer[index] = new``, cast to the storage dtype (fp8: saturated, written as bytes)."""
        if self._fp8:
            stored = new.clamp(-_FP8_MAX, _FP8_MAX).to(FP8_KV_DTYPE)
            buffer.view(torch.uint8)[index] = stored.view(torch.uint8)
        else:
            buffer[index] = new

    def _buffers(self) -> list[torch.Tensor]:
        """Every layer's keys and values, fp8 ones as their bytes (for row copies)."""
        tensors = [*self.keys, *self.values]
        return [t.view(torch.uint8) for t in tensors] if self._fp8 else tensors


def _bits_dtype(stored: torch.dtype) -> torch.dtype:
    """What a buffer of ``stored`` is allocated as: fp8 as ``uint8``, the same bytes."""
    return torch.uint8 if stored == FP8_KV_DTYPE else stored
