"""The seam between the upstream engine and whoever records its metrics.

The engine does not import Prometheus: ``obs`` implements ``UpstreamMetrics`` and
passes it in, which keeps the engine testable and the metric names in one place.
Every ``upstream`` argument is the configured base URL, a fixed, small label set.
"""

from __future__ import annotations

from typing import Literal, Protocol

from glimpse.engine.upstream.routing import RouteOutcome

__all__ = ["NullUpstreamMetrics", "Outcome", "UpstreamMetrics"]

#: How one attempt on one upstream ended (a low-cardinality label).
Outcome = Literal[
    "2xx", "4xx", "5xx", "connect_error", "timeout", "stream_error", "cancelled", "local_pool_full"
]


class UpstreamMetrics(Protocol):
    def on_request(self, upstream: str, outcome: Outcome, seconds: float) -> None:
        """One attempt finished; ``seconds`` runs from sending to the last byte or the failure."""

    def set_in_flight(self, upstream: str, count: int) -> None:
        """Requests now being answered by ``upstream``."""

    def set_healthy(self, upstream: str, healthy: bool) -> None:
        """Whether the circuit of ``upstream`` is closed (it takes traffic)."""

    def on_route(self, outcome: RouteOutcome) -> None:
        """One cache-aware pick and what decided it (not called under least-outstanding routing)."""


class NullUpstreamMetrics:
    """Records nothing; the default when metrics are off."""

    def on_request(self, upstream: str, outcome: Outcome, seconds: float) -> None:
        return None

    def set_in_flight(self, upstream: str, count: int) -> None:
        return None

    def set_healthy(self, upstream: str, healthy: bool) -> None:
        return None

    def on_route(self, outcome: RouteOutcome) -> None:
        return None
