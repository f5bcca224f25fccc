"""Scale-out engine: proxy to OpenAI-compatible servers with balancing and failover."""

from glimpse.engine.upstream.balancer import Balancer, Upstream, UpstreamSpec, parse_upstream_url
from glimpse.engine.upstream.breaker import BreakerState, CircuitBreaker
from glimpse.engine.upstream.engine import UpstreamEngine
from glimpse.engine.upstream.hooks import NullUpstreamMetrics, Outcome, UpstreamMetrics
from glimpse.engine.upstream.routing import HashRing, RouteOutcome, RoutingPolicy, affinity_key

__all__ = [
    "Balancer",
    "BreakerState",
    "CircuitBreaker",
    "HashRing",
    "NullUpstreamMetrics",
    "Outcome",
    "RouteOutcome",
    "RoutingPolicy",
    "Upstream",
    "UpstreamEngine",
    "UpstreamMetrics",
    "UpstreamSpec",
    "affinity_key",
    "parse_upstream_url",
]
