"""Upstream descriptions and the balancer: cache-aware, else least outstanding requests.

A request with an affinity key (``routing.affinity_key``) goes to the first upstream
on the key's walk of the hash ring that may take it and is not busier than the
least-loaded one by more than ``load_margin`` requests per unit of weight, so an
upstream's prefix cache keeps serving its conversations and images without one hot
key piling work on it. Without a key (or with policy ``least_outstanding``), a pick
takes the available upstream with the fewest requests in flight per unit of weight.
Ties are broken by a rotating start index, so idle upstreams share traffic
round-robin instead of all going to the first one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from glimpse.engine.upstream.breaker import BreakerState, CircuitBreaker
from glimpse.engine.upstream.routing import HashRing, RouteOutcome, RoutingPolicy

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
    #: LoRA adapters it serves (``/v1/models`` entries with a ``parent``): name -> where it was read from.
    adapters: dict[str, str] = field(default_factory=dict)
    #: Health checks since its model list was last read (it is read again every few).
    checks_since_models: int = 0
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

    def outstanding(self) -> float:
        """Requests in flight per unit of weight: what the load margin compares."""
        return self.in_flight / self.spec.weight


def _no_record(outcome: RouteOutcome) -> None:
    return None


class Balancer:
    def __init__(
        self,
        upstreams: Sequence[Upstream],
        *,
        max_in_flight: int | None = None,
        policy: RoutingPolicy = "cache_aware",
        load_margin: float = 8,
        on_route: Callable[[RouteOutcome], None] = _no_record,
    ) -> None:
        if not upstreams:
            raise ValueError("the upstream engine needs at least one upstream URL")
        names = [u.name for u in upstreams]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate upstream URLs: {names}")
        self._upstreams = tuple(upstreams)
        self._by_name = {u.name: u for u in self._upstreams}
        self._max_in_flight = max_in_flight
        self._start = 0
        self._policy: RoutingPolicy = policy
        self._load_margin = load_margin
        self._on_route = on_route
        self._ring = HashRing([(u.name, u.spec.weight) for u in self._upstreams])

    @classmethod
    def from_urls(
        cls,
        urls: Iterable[str],
        breaker_factory: Callable[[], CircuitBreaker],
        *,
        max_in_flight: int | None = None,
        policy: RoutingPolicy = "cache_aware",
        load_margin: float = 8,
        on_route: Callable[[RouteOutcome], None] = _no_record,
    ) -> Balancer:
        upstreams = [Upstream(spec=parse_upstream_url(url), breaker=breaker_factory()) for url in urls]
        return cls(
            upstreams, max_in_flight=max_in_flight, policy=policy, load_margin=load_margin, on_route=on_route
        )

    @property
    def cache_aware(self) -> bool:
        """Whether picks follow affinity keys (else every pick is least outstanding)."""
        return self._policy == "cache_aware"

    @property
    def upstreams(self) -> tuple[Upstream, ...]:
        return self._upstreams

    def _has_room(self, upstream: Upstream) -> bool:
        return self._max_in_flight is None or upstream.in_flight < self._max_in_flight

    def _eligible(self, upstream: Upstream, exclude: frozenset[str] | set[str]) -> bool:
        return upstream.name not in exclude and self._has_room(upstream) and upstream.breaker.available()

    def pick(
        self, exclude: frozenset[str] | set[str] = frozenset(), key: str | None = None
    ) -> Upstream | None:
        """The next upstream to try (its breaker slot taken), or ``None`` if none may take it.

        ``key`` is the request's affinity key; it is followed only under policy ``cache_aware``,
        and each such pick reports what decided it to ``on_route``.
        """
        if not self.cache_aware:
            return self._least_outstanding(exclude)
        if key is None:
            upstream = self._least_outstanding(exclude)
            if upstream is not None:
                self._on_route("no_key")
            return upstream
        return self._by_affinity(key, exclude)

    def _by_affinity(self, key: str, exclude: frozenset[str] | set[str]) -> Upstream | None:
        ring = [self._by_name[name] for name in self._ring.walk(key)]
        eligible = [u for u in ring if self._eligible(u, exclude)]
        if not eligible:
            return None
        ceiling = min(u.outstanding() for u in eligible) + self._load_margin
        home = ring[0]
        for upstream in eligible:
            if upstream.outstanding() <= ceiling and upstream.breaker.try_acquire():
                self._on_route("affinity_kept" if upstream is home else self._why_not(home, exclude))
                return upstream
        return None

    def _why_not(self, home: Upstream, exclude: frozenset[str] | set[str]) -> RouteOutcome:
        """Why the key's own upstream was passed over: full or too busy (load), else health."""
        healthy = home.name not in exclude and home.breaker.available()
        return "overridden_load" if healthy else "overridden_health"

    def _least_outstanding(self, exclude: frozenset[str] | set[str]) -> Upstream | None:
        count = len(self._upstreams)
        order = [self._upstreams[(self._start + i) % count] for i in range(count)]
        self._start = (self._start + 1) % count
        candidates = [u for u in order if self._eligible(u, exclude)]
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
