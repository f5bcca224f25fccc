"""Finished sequences' keys and values, kept in free cache slots for the next prompt that starts the same.

A follow-up question about an image re-sends the whole conversation: the image,
the first question, the answer, then the new question. Without this cache every
turn re-runs the vision tower and re-prefills that history. Here a sequence that
finishes leaves its keys and values where they are, in a slot that is now free,
indexed by the hash chain of its 16-token blocks; a new prompt whose first
blocks hash the same copies those rows into its own slot and prefills only the
rest.

- **Keys.** Block ``i``'s key hashes block ``i - 1``'s key, its token ids and, for
  each image token in it, that image's content key (``image_keys``: a SHA-256 of
  its pixel rows as the processor produced them): two different images whose
  tokens share ids never share a key, and a key stands for the
  whole prefix up to the end of its block.
- **Memory.** Entries live only in free slots. A new sequence takes an empty free
  slot first, else the least recently used entry's, so the cache never refuses a
  request or uses memory the batch would not have: it is the free slots' content.
- **Sharing.** A hit copies the prefix rows into the new sequence's slot (a memory
  copy, no model work) and the entry stays, for the next follow-up or user.
  Running sequences do not share rows (the cache has slots, not pages): two
  requests with the same prefix each hold their own copy.
- At least one prompt token is always prefilled, for the logits of the first answer token.
- The last row of a slot (``SlotKVCache.scratch_position``) is never part of an entry: the
  padding rows of the padded decode step (``cuda_graphs``) write there, in free slots.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from glimpse.engine.batching.kv_cache import SlotKVCache
from glimpse.engine.batching.prompt import PreparedPrompt

__all__ = ["BLOCK_TOKENS", "PrefixCache", "PrefixCacheObserver", "block_keys"]

#: Tokens per hashed block: the granularity of a hit (vLLM's default block size).
BLOCK_TOKENS = 16


def block_keys(
    prompt: PreparedPrompt,
    image_keys: Sequence[bytes],
    token_ids: Sequence[int],
    known: Sequence[bytes] = (),
    salt: bytes = b"",
) -> list[bytes]:
    """The key of every whole block of ``token_ids`` (the prompt's own, then any generated ones).

    ``known`` are the keys of its first blocks, already computed (the prompt's, at admission):
    the chain goes on from the last of them instead of hashing those blocks again. ``salt``
    starts the chain: what else decides the keys and values (a LoRA adapter's digest).
    """
    keys = list(known)
    previous = keys[-1] if keys else salt
    for start in range(len(keys) * BLOCK_TOKENS, len(token_ids) - BLOCK_TOKENS + 1, BLOCK_TOKENS):
        end = start + BLOCK_TOKENS
        digest = hashlib.blake2b(previous, digest_size=16)
        digest.update(array("q", token_ids[start:end]).tobytes())
        for index, image in enumerate(prompt.images):
            if image.start < end and image.end > start:  # this block holds some of the image's tokens
                digest.update(index.to_bytes(2, "little"))
                digest.update(image_keys[index])
        previous = digest.digest()
        keys.append(previous)
    return keys


class PrefixCacheObserver(Protocol):
    """Where the cache reports what the metrics need (called on the engine thread)."""

    def on_prefix_evictions(self, count: int) -> None:
        """``count`` entries were overwritten by new sequences (no free slot was empty)."""


@dataclass(slots=True)
class _Entry:
    keys: list[bytes]
    last_used: int


@dataclass(slots=True)
class PrefixCache:
    """Which free slots of ``cache`` hold which prefixes (engine thread only)."""

    cache: SlotKVCache
    observer: PrefixCacheObserver | None = None
    _entries: dict[int, _Entry] = field(default_factory=dict)  # free slot -> what it holds
    _index: dict[bytes, set[int]] = field(default_factory=dict)  # block key -> free slots holding it
    _clock: int = 0
    #: Entries overwritten by a new sequence since start.
    evictions: int = 0

    @property
    def entries(self) -> int:
        return len(self._entries)

    def match(self, keys: Sequence[bytes]) -> tuple[int | None, int]:
        """The free slot holding the longest prefix of ``keys``, and how many blocks it holds."""
        best: tuple[int | None, int] = (None, 0)
        for count, key in enumerate(keys, start=1):
            slots = self._index.get(key)
            if not slots:
                break
            best = (max(slots, key=lambda s: self._entries[s].last_used), count)
        return best

    def admit(self, keys: Sequence[bytes], prompt_len: int) -> tuple[int, int]:
        """Take a slot for a new sequence whose prompt has block ``keys``; returns (slot, tokens reused).

        The slot is ``cache.used`` (running slots stay ``0 .. n-1``), filled with the reused
        prefix's keys and values; the cache records that many tokens in it.
        """
        source, blocks = self.match(keys)
        reused = min(blocks * BLOCK_TOKENS, prompt_len - 1) if source is not None else 0
        target = self.cache.used
        if source == target:  # the entry is in the very slot the sequence takes: used in place
            self._detach(target)
        else:
            victim = self._victim(avoid=source)
            if victim != target:
                self._exchange(victim, target)  # what ``target`` held moves to ``victim``
            self._detach(target)
            if source is not None and reused > 0:
                self._entries[source].last_used = self._tick()
                self.cache.copy_rows(source, target, reused)
        slot = self.cache.allocate_with(reused)
        assert slot == target
        return slot, reused

    def keep(self, slot: int, keys: Sequence[bytes]) -> None:
        """``slot`` was just freed with these whole blocks in it: index them.

        Not a block that reaches the slot's scratch row: padded decode steps write there.
        """
        self._detach(slot)
        keys = keys[: self.cache.scratch_position // BLOCK_TOKENS]
        if not keys:
            return
        self._entries[slot] = _Entry(list(keys), self._tick())
        for key in keys:
            self._index.setdefault(key, set()).add(slot)

    def _victim(self, avoid: int | None) -> int:
        """The free slot a new sequence overwrites (not ``avoid``): an empty one, else the least
        recently used entry's."""
        free = [s for s in range(self.cache.used, self.cache.max_slots) if s != avoid]
        empty = next((s for s in free if s not in self._entries), None)
        if empty is not None:
            return empty
        self.evictions += 1
        if self.observer is not None:
            self.observer.on_prefix_evictions(1)
        return min(free, key=lambda s: self._entries[s].last_used)

    def _exchange(self, a: int, b: int) -> None:
        """Swap what free slots ``a`` and ``b`` hold (rows and entries)."""
        entry_a, entry_b = self._entries.get(a), self._entries.get(b)
        length_a = len(entry_a.keys) * BLOCK_TOKENS if entry_a else 0
        length_b = len(entry_b.keys) * BLOCK_TOKENS if entry_b else 0
        self.cache.swap_rows(a, b, length_a, length_b)
        self._detach(a)
        self._detach(b)
        for slot, entry in ((b, entry_a), (a, entry_b)):
            if entry is not None:
                self._entries[slot] = entry
                for key in entry.keys:
                    self._index.setdefault(key, set()).add(slot)

    def _detach(self, slot: int) -> None:
        entry = self._entries.pop(slot, None)
        if entry is None:
            return
        for key in entry.keys:
            slots = self._index.get(key)
            if slots is not None:
                slots.discard(slot)
                if not slots:
                    del self._index[key]

    def _tick(self) -> int:
        self._clock += 1
        return self._clock
