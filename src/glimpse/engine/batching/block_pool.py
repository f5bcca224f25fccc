"""Which KV blocks are free, shared or cached: reference counts, the hash index and the LRU.

Keys and values live in fixed-size blocks (``BLOCK_TOKENS`` tokens of every layer,
``kv_cache.PagedKVCache``); this is their bookkeeping, on the host, with no tensors.

- **Reference counts.** A block is held by every running sequence whose block table
  lists it. Two requests about the same image hold the same prefix blocks, counted
  twice, stored once; a block is never reused for other tokens while anyone holds it.
- **Hash index.** A block full of a sequence's tokens may be *registered* under its
  prefix key (``prefix_cache.block_keys``: the hash chain of every token and image up to
  its end), so a later prompt that starts the same finds it. One block per key: a second
  sequence that computed the same block while the first was running keeps its own copy
  unregistered, and that copy is freed with it.
- **Free blocks.** When its last holder leaves, a registered block stays in the index
  with no holder, in least-recently-used order; an unregistered one is simply free.
  ``allocate`` takes a free never-registered block first, and only then evicts the least
  recently used cached one. So cached blocks are the memory no running sequence needs:
  the cache never takes a block a sequence would have had without it.

Block 0 is the *scratch* block: never allocated, it is what the padding rows of the
fixed-shape decode step (``cuda_graphs``) and the unused tail of every block table point
at, so a padding row's writes land where no sequence reads.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable

__all__ = ["SCRATCH_BLOCK", "BlockPool"]

#: The block padding rows write into and free table entries point at; never allocated.
SCRATCH_BLOCK = 0


class BlockPool:
    """``num_blocks`` blocks (block 0 the scratch one): who holds each, which are cached.

    Not thread-safe: only the engine thread touches it.
    """

    def __init__(self, num_blocks: int, on_evict: Callable[[int], None] | None = None) -> None:
        if num_blocks < 2:
            raise ValueError("a pool needs the scratch block and at least one more")
        self.num_blocks = num_blocks
        self._on_evict = on_evict
        self._refs = [0] * num_blocks
        self._free: deque[int] = deque(range(1, num_blocks))  # held by nobody, registered under no key
        self._cached: OrderedDict[int, None] = OrderedDict()  # registered, held by nobody: oldest first
        self._key_of: dict[int, bytes] = {}
        self._block_of: dict[bytes, int] = {}
        #: Blocks held more than once now (kept as blocks are held and let go: read every step).
        self.shared = 0
        #: Registered blocks taken back for new tokens since start.
        self.evictions = 0

    @property
    def available(self) -> int:
        """Blocks ``allocate`` can hand out now (free ones, then cached ones it would evict)."""
        return len(self._free) + len(self._cached)

    @property
    def cached(self) -> int:
        """Blocks registered in the hash index (held or not)."""
        return len(self._block_of)

    def refs(self, block: int) -> int:
        return self._refs[block]

    def key(self, block: int) -> bytes | None:
        return self._key_of.get(block)

    def allocate(self) -> int:
        """A block for new tokens, held once: a free one, else the least recently used cached one."""
        if self._free:
            block = self._free.popleft()
        elif self._cached:
            block, _ = self._cached.popitem(last=False)
            self._unregister(block)
            self.evictions += 1
            if self._on_evict is not None:
                self._on_evict(1)
        else:
            raise RuntimeError("no free KV block")  # sizing rules this out: a bug if it happens
        self._refs[block] = 1
        return block

    def lookup(self, key: bytes) -> int | None:
        return self._block_of.get(key)

    def hold(self, block: int) -> None:
        """One more holder of ``block`` (a cached block with none leaves the LRU)."""
        if block == SCRATCH_BLOCK:
            raise ValueError("the scratch block is never held")
        if self._refs[block] == 0:
            if block not in self._cached:
                raise ValueError(f"block {block} is free: allocate it instead")
            del self._cached[block]
        self._refs[block] += 1
        self.shared += int(self._refs[block] == 2)

    def release(self, block: int) -> None:
        """One holder fewer; with none left the block is cached (most recently used) or free."""
        if self._refs[block] <= 0:
            raise ValueError(f"block {block} is not held")
        self._refs[block] -= 1
        self.shared -= int(self._refs[block] == 1)
        if self._refs[block] == 0:
            if block in self._key_of:
                self._cached[block] = None
            else:
                self._free.append(block)

    def register(self, block: int, key: bytes) -> bool:
        """Index held ``block`` under ``key``; False when another block has the key (this one stays
        private) or this one already has a key."""
        if self._refs[block] <= 0:
            raise ValueError(f"block {block} is not held")
        if key in self._block_of or block in self._key_of:
            return False
        self._key_of[block] = key
        self._block_of[key] = block
        return True

    def forget(self, block: int) -> None:
        """Drop ``block`` from the index (its contents are not to be trusted); free if nobody holds it."""
        if block not in self._key_of:
            return
        self._unregister(block)
        if block in self._cached:
            del self._cached[block]
            self._free.append(block)

    def _unregister(self, block: int) -> None:
        key = self._key_of.pop(block)
        del self._block_of[key]
