"""In-process LRU cache bounded by bytes."""

from __future__ import annotations

from collections import OrderedDict

from glimpse.cache.value import CachedResult

__all__ = ["MemoryCache"]


class MemoryCache:
    """Least-recently-used entries go first once ``max_bytes`` would be exceeded.

    Bounded by bytes, not entries, because answers range from a word to
    thousands of tokens. An entry's size is its serialised value plus its key,
    the same measure Redis would spend. Everything runs on the event loop
    without awaiting, so no lock is needed.
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[CachedResult, int]] = OrderedDict()
        self._size = 0
        self.evictions = 0

    @property
    def size_bytes(self) -> int:
        return self._size

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    async def get(self, key: str) -> CachedResult | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    async def set(self, key: str, value: CachedResult) -> None:
        size = len(value.to_bytes()) + len(key.encode("utf-8"))
        self._discard(key)
        if size > self.max_bytes:
            return  # would evict everything and still not fit
        while self._size + size > self.max_bytes:
            _, (_, evicted_size) = self._entries.popitem(last=False)
            self._size -= evicted_size
            self.evictions += 1
        self._entries[key] = (value, size)
        self._size += size

    async def close(self) -> None:
        self._entries.clear()
        self._size = 0

    def _discard(self, key: str) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._size -= old[1]
