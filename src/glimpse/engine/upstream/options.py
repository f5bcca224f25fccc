"""Tuning knobs of the upstream engine that are not (yet) part of ``EngineSettings``.

They live in one frozen value so the CLI can map settings onto it in one place and
tests can shrink time-outs and thresholds without touching global settings.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["UpstreamOptions"]


@dataclass(slots=True, frozen=True)
class UpstreamOptions:
    #: Seconds to open a TCP connection to an upstream; a failure is retried elsewhere.
    connect_timeout_s: float = 5.0
    #: Longest silence between two bytes of an answer (first token included) before 504.
    read_timeout_s: float = 120.0
    #: Seconds to send the request body (images included).
    write_timeout_s: float = 30.0
    #: Seconds to wait for a free pooled connection.
    pool_timeout_s: float = 10.0
    #: Seconds between active health checks of every upstream.
    health_interval_s: float = 3.0
    #: Time-out of one health check request.
    health_timeout_s: float = 2.0
    #: Consecutive failures (requests or health checks) that take an upstream out.
    failure_threshold: int = 3
    #: Seconds an upstream stays out before one trial request (or health check) may close it again.
    cooldown_s: float = 5.0
    #: Most requests in flight to one upstream; ``None`` means no limit (the upstream queues).
    max_in_flight_per_upstream: int | None = None
    #: Images up to this many pixels go as lossless PNG; larger ones as JPEG quality 95.
    #: 1 MP keeps even a noisy PNG near 3 MB, under a Glimpse node's default 5 MiB image limit.
    png_max_pixels: int = 1_000_000
    #: Threads that encode images into data URLs at the same time.
    encode_workers: int = 2
    #: Connection pool size of the client the engine creates when none is given.
    max_connections: int = 512
    #: Most bytes of an upstream's error body read: a 4xx message goes to the client (500
    #: characters at most), a 5xx one only to the log.
    max_error_body_bytes: int = 64 * 1024
    #: Longest line of an upstream's event stream, and largest ``/v1/models`` answer.
    max_event_bytes: int = 1024 * 1024
    #: An answer may be at most ``max_event_bytes`` + this many bytes per requested output
    #: token (``max_tokens``): about ten times what vLLM's chunks take, so only a runaway
    #: upstream reaches it.
    response_bytes_per_token: int = 4096
    #: An upstream's ``Retry-After`` is passed on clamped to 1..this many seconds.
    max_retry_after_s: int = 60

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if self.encode_workers < 1:
            raise ValueError("encode_workers must be at least 1")
        if min(self.max_error_body_bytes, self.max_event_bytes, self.response_bytes_per_token) < 1:
            raise ValueError("upstream size bounds must be positive")
        if self.max_retry_after_s < 1:
            raise ValueError("max_retry_after_s must be at least 1")
