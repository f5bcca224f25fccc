"""Scale-out engine: proxy to OpenAI-compatible servers with balancing and failover."""

from glimpse.engine.upstream.balancer import Balancer, Upstream, UpstreamSpec, parse_upstream_url
from glimpse.engine.upstream.breaker import BreakerState, CircuitBreaker
from glimpse.engine.upstream.engine import UpstreamEngine
from glimpse.engine.upstream.hooks import NullUpstreamMetrics, Outcome, UpstreamMetrics

__all__ = [
    "Balancer",
    "BreakerState",
    "CircuitBreaker",
    "NullUpstreamMetrics",
    "Outcome",
    "Upstream",
    "UpstreamEngine",
    "UpstreamMetrics",
    "UpstreamSpec",
    "parse_upstream_url",
]
