"""Prompts that start like one seen before reuse its KV blocks instead of prefilling them again.

A follow-up question about an image re-sends the whole conversation: the image,
the first question, the answer, then the new question. Without this cache every
turn re-runs the vision tower and re-prefills that history. Here every full block
of a sequence's keys and values (``kv_cache.BLOCK_TOKENS`` tokens) is registered
under the hash chain of its tokens (``block_keys``), the prompt's blocks as soon as
they are prefilled and the answer's when the sequence finishes; a new prompt whose
first blocks hash the same puts those very blocks in its block table and prefills
only the rest.

- **Keys.** Block ``i``'s key hashes block ``i - 1``'s key, its token ids and, for
  each image token in it, that image's content key (``image_keys``: a SHA-256 of
  its pixel rows as the processor produced them): two different images whose
  tokens share ids never share a key, and a key stands for the
  whole prefix up to the end of its block.
- **Sharing.** A hit is no copy: the cached blocks are held by the new sequence as
  well (reference counts, ``block_pool``), so two requests about one image running
  at once hold its blocks once. Nobody writes into a shared block: cached blocks are
  full, and a hit that ends inside one (at least one prompt token is always prefilled,
  for the logits of the first answer token) gets a private copy of that block.
- **Memory.** Cached blocks nobody holds are evicted least recently used first, and
  only when no block was never cached: the cache is the memory running sequences do
  not need, and never refuses a request or takes memory the batch would have had.
- A sequence that fails leaves nothing: the blocks it registered are dropped from the index.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

from glimpse.engine.batching.kv_cache import BLOCK_TOKENS, PagedKVCache
from glimpse.engine.batching.prompt import PreparedPrompt

__all__ = ["BLOCK_TOKENS", "PrefixCache", "block_keys"]


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


@dataclass(slots=True)
class PrefixCache:
    """The hash index over ``cache``'s blocks: lookups at admission, registration as blocks fill
    (engine thread only)."""

    cache: PagedKVCache

    @property
    def entries(self) -> int:
        """Blocks registered under a prefix key, held by running sequences or not."""
        return self.cache.pool.cached

    @property
    def evictions(self) -> int:
        """Cached blocks taken back for new tokens since start."""
        return self.cache.pool.evictions

    @property
    def shared_blocks(self) -> int:
        """Blocks held by more than one running sequence now."""
        return self.cache.pool.shared

    def match(self, keys: Sequence[bytes]) -> list[int]:
        """The cached blocks holding the longest prefix of ``keys``, in order."""
        blocks = []
        for key in keys:
            block = self.cache.pool.lookup(key)
            if block is None:
                break
            blocks.append(block)
        return blocks

    def admit(self, keys: Sequence[bytes], prompt_len: int) -> tuple[int, int]:
        """Take a slot for a new sequence whose prompt has block ``keys``; returns (slot, tokens reused).

        The slot's table starts with the cached blocks of the longest matching prefix, all but the
        prompt's last token.
        """
        blocks = self.match(keys)
        reused = min(len(blocks) * BLOCK_TOKENS, prompt_len - 1)
        slot = self.cache.allocate(blocks[: -(-reused // BLOCK_TOKENS)], reused)
        return slot, reused

    def register(self, slot: int, keys: Sequence[bytes], start: int = 0) -> None:
        """Index ``slot``'s blocks ``start .. len(keys) - 1`` (full, written) under ``keys``.

        A key another block already has keeps that block: this one stays private.
        """
        table = self.cache.block_table(slot)
        for index in range(start, len(keys)):
            self.cache.pool.register(table[index], keys[index])

    def forget(self, slot: int, start: int) -> None:
        """Drop ``slot``'s blocks from ``start`` on from the index (those it did not get from it)."""
        for block in self.cache.block_table(slot)[start:]:
            self.cache.pool.forget(block)
