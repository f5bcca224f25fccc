"""Cache-aware routing: which upstream a request belongs to, by what it shares with earlier ones.

Upstream servers keep what they computed for a prompt (vLLM's automatic prefix
caching, SGLang's RadixAttention, a Glimpse node's caches), but only the server
that saw the prompt has it. So a request is sent where its conversation or its
image went before: its *affinity key* (the first image's content hash, else the
conversation's opening, the system prompt and the first user turn) is placed on
a consistent-hash ring of the upstreams. A ring with many virtual nodes per
upstream moves only about 1/N of the keys when an upstream joins or leaves,
where ``hash % N`` would move almost all of them and cold-start every cache.
"""

from __future__ import annotations

import hashlib
import json
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from typing import Literal

from glimpse.engine.protocol import GenerationRequest

__all__ = ["RouteOutcome", "RoutingPolicy", "HashRing", "affinity_key"]

RoutingPolicy = Literal["cache_aware", "least_outstanding"]

#: What decided one pick (a low-cardinality metric label): the key's upstream took it
#: (``affinity_kept``), it was too busy (``overridden_load``) or unhealthy, out of rotation
#: or already failed this request (``overridden_health``), or the request had no key
#: (``no_key``: least outstanding).
RouteOutcome = Literal["affinity_kept", "overridden_load", "overridden_health", "no_key"]

#: Ring points per unit of upstream weight: with 160, each upstream's share of the
#: keys is within a few per cent of its weight's share.
VIRTUAL_NODES = 160


def _point(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def affinity_key(request: GenerationRequest) -> str | None:
    """What the request shares with earlier ones that an upstream may have cached; ``None`` if nothing.

    The first image's hash (``ImagePart.sha256``, of the bytes the client sent) comes first:
    the image's tokens are most of a prompt, and every question about that image, from any
    conversation, starts the same. Otherwise the system prompt(s) and the first user turn,
    which every later turn of the conversation repeats.
    """
    images = request.images
    if images:
        return "image:" + images[0].sha256
    opening: list[tuple[str, str]] = []
    for message in request.messages:
        opening.append((message.role, message.text))
        if message.role == "user":
            break
    if not any(text for _, text in opening):
        return None
    canonical = json.dumps(opening, separators=(",", ":"), ensure_ascii=False)
    return "text:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class HashRing:
    """Consistent hashing of keys onto names, ``VIRTUAL_NODES`` points per unit of weight."""

    def __init__(self, members: Sequence[tuple[str, float]], virtual_nodes: int = VIRTUAL_NODES) -> None:
        points: list[tuple[int, str]] = []
        for name, weight in members:
            count = max(1, round(virtual_nodes * weight))
            points.extend((_point(f"{name}#{i}"), name) for i in range(count))
        points.sort()
        self._hashes = [h for h, _ in points]
        self._names = [name for _, name in points]
        self._size = len({name for name, _ in members})

    def walk(self, key: str) -> Iterator[str]:
        """Every member once, in ring order from ``key``'s point: its home first, then the fallbacks."""
        if not self._hashes:
            return
        start = bisect_right(self._hashes, _point(key))
        seen: set[str] = set()
        count = len(self._names)
        for i in range(count):
            name = self._names[(start + i) % count]
            if name not in seen:
                seen.add(name)
                yield name
                if len(seen) == self._size:
                    return

    def home(self, key: str) -> str:
        """The member ``key`` belongs to when everyone is healthy and idle."""
        return next(self.walk(key))
