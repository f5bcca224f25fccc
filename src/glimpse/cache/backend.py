"""The seam between the result cache and where entries are kept."""

from __future__ import annotations

from typing import Protocol

from glimpse.cache.value import CachedResult

__all__ = ["CacheBackend", "CacheUnavailable"]


class CacheUnavailable(Exception):
    """The backend could not answer in time; the caller treats it as a miss.

    Raised instead of returning ``None`` so that a miss and an outage stay
    distinguishable for metrics. Never reaches a client: ``ResultCache`` catches it.
    """


class CacheBackend(Protocol):
    async def get(self, key: str) -> CachedResult | None:
        """The entry, or ``None`` on a miss; ``CacheUnavailable`` if it cannot tell."""
        ...

    async def set(self, key: str, value: CachedResult) -> None:
        """Keep the entry (best effort); ``CacheUnavailable`` if it could not."""
        ...

    async def close(self) -> None: ...
