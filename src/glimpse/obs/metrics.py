"""Every Prometheus metric Glimpse exports, in one registry per app.

Each ``Metrics`` owns its ``CollectorRegistry`` instead of using the process-wide
default, so tests (and several apps in one process) never collide. Label values
are bounded on purpose: routes are templates, statuses are codes, reasons and
verdicts come from fixed sets, upstreams from configuration.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

__all__ = ["UNMATCHED_ROUTE", "Metrics"]

logger = logging.getLogger(__name__)

#: Route label for requests that matched no route (404s), so scanners cannot
#: create a series per probed path.
UNMATCHED_ROUTE = "unmatched"

# Whole requests: from a fast cached answer to minutes-long generations.
_REQUEST_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
# First token: prefill of a few image tiles, plus queueing under load.
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
# Per output token: ~5 ms on a big GPU batch to ~1 s on a CPU.
_TPOT_BUCKETS = (0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
_QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_UPSTREAM_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

_CACHE_LOOKUP_RESULTS = frozenset({"hit", "miss", "error"})
_CACHE_STORE_RESULTS = {"stored": "ok", "store_error": "error"}
_DISCONNECT_STAGES = frozenset({"waiting", "streaming"})


class _GpuMemoryCollector:
    """GPU memory read at scrape time, only where torch already runs CUDA.

    Importing torch here would cost seconds and memory in a process that does
    not use it (e.g. the upstream proxy), and asking CUDA before the engine has
    initialised it would create a context from the scrape thread, so both are
    left alone.
    """

    NAME = "glimpse_gpu_memory_bytes"
    DOC = "GPU memory held by this process's torch allocator (allocated, reserved) and the device total."

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(self.NAME, self.DOC, labels=["device", "kind"])

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(self.NAME, self.DOC, labels=["device", "kind"])
        torch = sys.modules.get("torch")
        try:
            if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
                for index in range(torch.cuda.device_count()):
                    device = f"cuda:{index}"
                    family.add_metric([device, "allocated"], torch.cuda.memory_allocated(index))
                    family.add_metric([device, "reserved"], torch.cuda.memory_reserved(index))
                    total = torch.cuda.get_device_properties(index).total_memory
                    family.add_metric([device, "total"], total)
        except (RuntimeError, AttributeError) as exc:  # a broken driver must not break /metrics
            logger.debug("could not read GPU memory: %s", exc)
        yield family


class Metrics:
    """The metric objects (public attributes) plus helpers for the common updates."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry

        # HTTP
        self.http_requests = Counter(
            "glimpse_http_requests_total",
            "HTTP requests by route template and status code.",
            ["route", "status"],
            registry=r,
        )
        self.http_requests_in_flight = Gauge(
            "glimpse_http_requests_in_flight", "HTTP requests being handled now.", registry=r
        )
        self.request_duration = Histogram(
            "glimpse_request_duration_seconds",
            "End-to-end request time, until the last byte is sent.",
            ["route"],
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
        self.audit_failures = Counter(
            "glimpse_audit_failures_total",
            "Audit records that could not be built (build) or written (write), or were dropped (dropped).",
            ["reason"],
            registry=r,
        )
        self.store_failures = Counter(
            "glimpse_store_failures_total",
            "Shared-store (Redis) failures of the result cache, rate limiter and quota tracker; requests "
            "went through (uncached, unchecked).",
            ["store"],
            registry=r,
        )
        self.rejected_requests = Counter(
            "glimpse_rejected_requests_total",
            "Requests refused before generation, by reason (overloaded, rate_limited, draining, ...).",
            ["reason"],
            registry=r,
        )
        self.client_disconnects = Counter(
            "glimpse_client_disconnects_total",
            "Clients that went away before their answer was complete, by stage (waiting: before "
            "the answer started, streaming: during a streamed answer); their work was cancelled.",
            ["stage"],
            registry=r,
        )
        self.lora_requests = Counter(
            "glimpse_lora_requests_total",
            "Generation requests that named a LoRA adapter as their model, by adapter (names are the "
            "operator's: configured or loaded with an admin key).",
            ["adapter"],
            registry=r,
        )

        # Generation
        self.time_to_first_token = Histogram(
            "glimpse_time_to_first_token_seconds",
            "From admission to the first output token.",
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.time_per_output_token = Histogram(
            "glimpse_time_per_output_token_seconds",
            "Mean time between output tokens after the first.",
            buckets=_TPOT_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter("glimpse_prompt_tokens_total", "Prompt tokens processed.", registry=r)
        self.generation_tokens = Counter(
            "glimpse_generation_tokens_total", "Output tokens generated.", registry=r
        )

        # Engine
        self.queue_depth = Gauge(
            "glimpse_engine_queue_depth", "Requests admitted, waiting to start.", registry=r
        )
        self.queue_wait = Histogram(
            "glimpse_engine_queue_wait_seconds",
            "Time from admission to joining the running batch.",
            buckets=_QUEUE_BUCKETS,
            registry=r,
        )
        self.running_requests = Gauge(
            "glimpse_engine_running_requests", "Sequences in the running batch.", registry=r
        )
        self.batch_size = Histogram(
            "glimpse_engine_batch_size",
            "Sequences decoded together, per decode step.",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.prefix_queried_tokens = Counter(
            "glimpse_prefix_cache_queried_tokens_total",
            "Prompt tokens of admitted requests, looked up in the engine's prefix cache.",
            registry=r,
        )
        self.prefix_hit_tokens = Counter(
            "glimpse_prefix_cache_hit_tokens_total",
            "Prompt tokens found in the prefix cache (their KV blocks shared, not computed).",
            registry=r,
        )
        self.prefix_evictions = Counter(
            "glimpse_prefix_cache_evictions_total",
            "Cached KV blocks taken back for new tokens (the least recently used, when no never-cached "
            "block was free).",
            registry=r,
        )
        self.prefix_shared_blocks = Gauge(
            "glimpse_prefix_cache_shared_blocks",
            "KV blocks held by more than one running request (a shared prefix, stored once).",
            registry=r,
        )
        self.prefix_cached_blocks = Gauge(
            "glimpse_prefix_cache_cached_blocks",
            "KV blocks in the prefix cache's index, held by running requests or kept for later ones.",
            registry=r,
        )
        self.image_embedding_lookups = Counter(
            "glimpse_engine_image_embedding_cache_lookups_total",
            "Images whose features were found in the embedding cache (hit) or computed by the vision "
            "tower (miss).",
            ["result"],
            registry=r,
        )
        self.image_embedding_evictions = Counter(
            "glimpse_engine_image_embedding_cache_evictions_total",
            "Image features dropped from the embedding cache to make room (least recently used).",
            registry=r,
        )
        self.model_load = Gauge(
            "glimpse_model_load_seconds", "How long loading the model (and warm-up) took.", registry=r
        )
        self.weight_bytes = Gauge(
            "glimpse_engine_weight_bytes",
            "Bytes the model's weights hold in memory (quantized weights at their real storage).",
            registry=r,
        )
        self.kv_cache_bytes = Gauge(
            "glimpse_engine_kv_cache_bytes", "Bytes of the preallocated KV cache.", registry=r
        )
        self.info = Gauge(
            "glimpse_info",
            "Always 1; labels describe the running server.",
            ["version", "engine", "model"],
            registry=r,
        )

        # Cache and guard
        self.cache_requests = Counter(
            "glimpse_cache_requests_total",
            "Result-cache lookups by result (hit, miss, error).",
            ["result"],
            registry=r,
        )
        self.cache_stores = Counter(
            "glimpse_cache_stores_total", "Result-cache writes by result (ok, error).", ["result"], registry=r
        )
        self.cache_coalesced = Counter(
            "glimpse_cache_coalesced_total",
            "Requests that joined an identical request in flight instead of generating.",
            registry=r,
        )
        self.guard_verdicts = Counter(
            "glimpse_guard_verdicts_total",
            "Prompt-guard verdicts (pass, flag, block).",
            ["verdict"],
            registry=r,
        )

        # Upstream engine
        self.upstream_requests = Counter(
            "glimpse_upstream_requests_total",
            "Requests sent to upstream servers, by upstream and status.",
            ["upstream", "status"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "glimpse_upstream_errors_total",
            "Failed upstream requests by upstream and kind (connect, timeout, ...).",
            ["upstream", "kind"],
            registry=r,
        )
        self.upstream_latency = Histogram(
            "glimpse_upstream_request_duration_seconds",
            "Upstream request time, until its stream ends.",
            ["upstream"],
            buckets=_UPSTREAM_BUCKETS,
            registry=r,
        )
        self.upstream_in_flight = Gauge(
            "glimpse_upstream_in_flight", "Requests open to each upstream.", ["upstream"], registry=r
        )
        self.upstream_healthy = Gauge(
            "glimpse_upstream_healthy",
            "1 if the upstream passed its last health check, else 0.",
            ["upstream"],
            registry=r,
        )
        self.upstream_routes = Counter(
            "glimpse_upstream_routing_decisions_total",
            "Cache-aware picks by what decided them: affinity_kept (the request's image or conversation "
            "went to its upstream), overridden_load (that one was too busy), overridden_health (it was "
            "out of rotation or had failed the request), no_key (least outstanding).",
            ["outcome"],
            registry=r,
        )
        self.batch_lines = Counter(
            "glimpse_batch_lines_total",
            "Batch API lines run here: answered (completed), failed, or put back in the queue (requeued).",
            ["result"],
            registry=r,
        )
        self.batch_lines_in_flight = Gauge(
            "glimpse_batch_lines_in_flight", "Batch API lines generating on this replica now.", registry=r
        )
        self.batch_line_duration = Histogram(
            "glimpse_batch_line_duration_seconds",
            "Time to answer one batch line, from claiming it to storing its output.",
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )

        r.register(_GpuMemoryCollector())

    def render(self) -> tuple[bytes, str]:
        """Body and content type for ``/metrics``."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    # -- helpers: the label conventions live here, not at every call site --------

    def observe_request(self, route: str | None, status: int, duration_s: float) -> None:
        """One finished HTTP request; ``route`` is the matched template or None (unmatched)."""
        label = route or UNMATCHED_ROUTE
        self.http_requests.labels(route=label, status=str(int(status))).inc()
        self.request_duration.labels(route=label).observe(duration_s)

    def observe_generation(
        self, *, prompt_tokens: int, completion_tokens: int, ttft_s: float | None, total_s: float | None
    ) -> None:
        """Token counts and latencies of one finished generation.

        Time per output token is ``(total - ttft) / (completion_tokens - 1)``: the
        first token's time is prefill, which TTFT already measures.
        """
        self.prompt_tokens.inc(max(prompt_tokens, 0))
        self.generation_tokens.inc(max(completion_tokens, 0))
        if ttft_s is not None:
            self.time_to_first_token.observe(ttft_s)
            if total_s is not None and completion_tokens > 1:
                self.time_per_output_token.observe(max(total_s - ttft_s, 0.0) / (completion_tokens - 1))

    def observe_cache(self, event: str) -> None:
        """Takes ``glimpse.cache.CacheEvent`` values (plain strings; obs does not import cache)."""
        if event in _CACHE_LOOKUP_RESULTS:
            self.cache_requests.labels(result=event).inc()
        elif event in _CACHE_STORE_RESULTS:
            self.cache_stores.labels(result=_CACHE_STORE_RESULTS[event]).inc()
        elif event == "coalesced":
            self.cache_coalesced.inc()
        else:
            raise ValueError(f"unknown cache event {event!r}")

    def observe_rejected(self, reason: str) -> None:
        self.rejected_requests.labels(reason=reason).inc()

    def observe_disconnect(self, stage: str) -> None:
        """A client left early; ``stage`` is ``waiting`` or ``streaming``."""
        if stage not in _DISCONNECT_STAGES:
            raise ValueError(f"unknown disconnect stage {stage!r}")
        self.client_disconnects.labels(stage=stage).inc()

    def observe_guard(self, verdict: str) -> None:
        self.guard_verdicts.labels(verdict=verdict).inc()

    def set_info(self, *, version: str, engine: str, model: str) -> None:
        self.info.labels(version=version, engine=engine, model=model).set(1)
