"""Pick the engine the settings ask for, wired to the metrics."""

from __future__ import annotations

from glimpse.config import EngineSettings, ObsSettings, UpstreamSettings
from glimpse.engine.protocol import Engine
from glimpse.errors import ModelLoadError
from glimpse.obs import Metrics

__all__ = ["PrometheusBatchObserver", "PrometheusUpstreamMetrics", "build_engine"]

_NOT_ERRORS = frozenset({"2xx", "4xx", "cancelled"})


class PrometheusUpstreamMetrics:
    """The upstream engine's metrics hook, recorded in Glimpse's Prometheus registry."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def on_request(self, upstream: str, outcome: str, seconds: float) -> None:
        self._metrics.upstream_requests.labels(upstream, outcome).inc()
        if outcome not in _NOT_ERRORS:
            self._metrics.upstream_errors.labels(upstream, outcome).inc()
        self._metrics.upstream_latency.labels(upstream).observe(seconds)

    def set_in_flight(self, upstream: str, count: int) -> None:
        self._metrics.upstream_in_flight.labels(upstream).set(count)

    def set_healthy(self, upstream: str, healthy: bool) -> None:
        self._metrics.upstream_healthy.labels(upstream).set(int(healthy))

    def on_route(self, outcome: str) -> None:
        self._metrics.upstream_routes.labels(outcome).inc()


class PrometheusBatchObserver:
    """Queue wait and decode batch size of the in-process engine, in Glimpse's registry."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def on_admit(self, queue_wait_s: float) -> None:
        self._metrics.queue_wait.observe(max(queue_wait_s, 0.0))

    def on_decode_step(self, batch_size: int) -> None:
        self._metrics.batch_size.observe(batch_size)

    def on_prefix_reuse(self, prompt_tokens: int, reused_tokens: int) -> None:
        self._metrics.prefix_queried_tokens.inc(prompt_tokens)
        self._metrics.prefix_hit_tokens.inc(reused_tokens)

    def on_prefix_evictions(self, count: int) -> None:
        self._metrics.prefix_evictions.inc(count)

    def on_prefix_blocks(self, shared: int, cached: int) -> None:
        self._metrics.prefix_shared_blocks.set(shared)
        self._metrics.prefix_cached_blocks.set(cached)

    def on_image_embeddings(self, hits: int, misses: int, evictions: int) -> None:
        m = self._metrics
        if hits:
            m.image_embedding_lookups.labels("hit").inc(hits)
        if misses:
            m.image_embedding_lookups.labels("miss").inc(misses)
        if evictions:
            m.image_embedding_evictions.inc(evictions)


def build_engine(
    settings: EngineSettings,
    upstream: UpstreamSettings,
    metrics: Metrics | None = None,
    *,
    worker_nice: int = 0,
    malloc_mmap_threshold_bytes: int = 2**20,
    obs: ObsSettings | None = None,
) -> Engine:
    if settings.kind == "upstream":
        from glimpse.engine.upstream import UpstreamEngine

        hook = PrometheusUpstreamMetrics(metrics) if metrics is not None else None
        try:
            return UpstreamEngine(settings, upstream, metrics_hook=hook)
        except ValueError as exc:
            raise ModelLoadError(
                f"The upstream engine cannot start: {exc}. Pass one or more --upstream URLs of "
                "OpenAI-compatible servers, e.g. --upstream http://10.0.0.5:8000."
            ) from exc
    observer = PrometheusBatchObserver(metrics) if metrics is not None else None
    if settings.process:
        from glimpse.engine.process import EngineProcess

        return EngineProcess(
            settings,
            observer,
            obs=obs,
            worker_nice=worker_nice,
            malloc_mmap_threshold_bytes=malloc_mmap_threshold_bytes,
        )
    from glimpse.engine.hf import HFEngine

    return HFEngine(
        settings, observer, worker_nice=worker_nice, malloc_mmap_threshold_bytes=malloc_mmap_threshold_bytes
    )
