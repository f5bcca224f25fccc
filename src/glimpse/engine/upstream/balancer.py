"""Upstream descriptions and the least-outstanding-requests balancer.

Each pick takes the available upstream with the fewest requests in flight per
unit of weight. Ties are broken by a rotating start index, so idle upstreams
share traffic round-robin instead of all going to the first one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from glimpse.engine.upstream.breaker import BreakerState, CircuitBreaker

__all__ = ["Balancer", "Upstream", "UpstreamSpec", "parse_upstream_url"]


@dataclass(slots=True, frozen=True)
class UpstreamSpec:
    #: Base URL without a trailing ``/`` or ``/v1``, e.g. ``http://10.0.0.5:8000``; requests go here.
    base_url: str
    weight: float = 1.0

    @property
    def name(self) -> str:
        """The base URL without ``user:password@``: what logs, metrics and health details show."""
        parts = urlsplit(self.base_url)
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


def parse_upstream_url(raw: str) -> UpstreamSpec:
    """Parse ``http://host:port[/prefix][/v1][#weight=W]`` into a base URL and a weight."""
    parts = urlsplit(raw.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"upstream URL must be http(s)://host[:port][/path], got {raw!r}")
    weight = 1.0
    if parts.fragment:
        values = parse_qs(parts.fragment).get("weight")
        if not values:
            raise ValueError(
                f"unknown upstream URL fragment {parts.fragment!r}; only #weight=W is understood"
            )
        weight = float(values[-1])
        if not weight > 0:
            raise ValueError(f"upstream weight must be positive, got {values[-1]!r}")
    if parts.query:
        raise ValueError(f"upstream URL must not have a query string: {raw!r}")
    path = parts.path.rstrip("/")
    path = path.removesuffix("/v1")
    return UpstreamSpec(base_url=f"{parts.scheme}://{parts.netloc}{path}", weight=weight)


@dataclass(slots=True)
class Upstream:
    """One upstream server and what we know about it; mutated on the event loop only."""

    spec: UpstreamSpec
    breaker: CircuitBreaker
    in_flight: int = 0
    #: The upstream's name for our model, learnt from its ``/v1/models``.
    model: str | None = None
    #: Health paths still worth trying (``/health`` is dropped when it answers 404).
    health_paths: tuple[str, ...] = ("/health", "/v1/models")
    last_error: str = ""
    #: Attempts sent to this upstream since start (shown in health detail).
    attempts: int = 0

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def url(self) -> str:
        """Where requests go (credentials included); never shown anywhere."""
        return self.spec.base_url

    @property
    def healthy(self) -> bool:
        return self.breaker.state is BreakerState.CLOSED

    def load(self) -> float:
        return (self.in_flight + 1) / self.spec.weight


class Balancer:
    def __init__(self, upstreams: Sequence[Upstream], *, max_in_flight: int | None = None) -> None:
        if not upstreams:
            raise ValueError("the upstream engine needs at least one upstream URL")
        names = [u.name for u in upstreams]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate upstream URLs: {names}")
        self._upstreams = tuple(upstreams)
        self._max_in_flight = max_in_flight
        self._start = 0

    @classmethod
    def from_urls(
        cls,
        urls: Iterable[str],
        breaker_factory: Callable[[], CircuitBreaker],
        *,
        max_in_flight: int | None = None,
    ) -> Balancer:
        upstreams = [Upstream(spec=parse_upstream_url(url), breaker=breaker_factory()) for url in urls]
        return cls(upstreams, max_in_flight=max_in_flight)

    @property
    def upstreams(self) -> tuple[Upstream, ...]:
        return self._upstreams

    def _has_room(self, upstream: Upstream) -> bool:
        return self._max_in_flight is None or upstream.in_flight < self._max_in_flight

    def pick(self, exclude: frozenset[str] | set[str] = frozenset()) -> Upstream | None:
        """The next upstream to try (its breaker slot taken), or ``None`` if none may take it."""
        count = len(self._upstreams)
        order = [self._upstreams[(self._start + i) % count] for i in range(count)]
        self._start = (self._start + 1) % count
        candidates = [
            u for u in order if u.name not in exclude and self._has_room(u) and u.breaker.available()
        ]
        # sorted() is stable, so equal loads keep the rotated order.
        for upstream in sorted(candidates, key=Upstream.load):
            if upstream.breaker.try_acquire():
                return upstream
        return None

    def any_available(self) -> bool:
        return any(u.breaker.available() for u in self._upstreams)

    def all_full(self) -> bool:
        """Every available upstream is at its in-flight limit (so: overloaded, not broken)."""
        available = [u for u in self._upstreams if u.breaker.available()]
        return bool(available) and not any(self._has_room(u) for u in available)

    def seconds_until_trial(self) -> float:
        return min(u.breaker.seconds_until_trial() for u in self._upstreams)
