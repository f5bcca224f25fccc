"""Observability: Prometheus metrics and structured logs with request ids.

Framework-free: the API's middleware calls into these with plain values.
"""

from glimpse.obs.logging import (
    JsonFormatter,
    RedactingFilter,
    RequestIdFilter,
    configure_logging,
    get_request_id,
    new_request_id,
    redact,
    request_id_context,
    reset_request_id,
    sanitize_request_id,
    set_request_id,
)
from glimpse.obs.metrics import UNMATCHED_ROUTE, Metrics

__all__ = [
    "UNMATCHED_ROUTE",
    "JsonFormatter",
    "Metrics",
    "RedactingFilter",
    "RequestIdFilter",
    "configure_logging",
    "get_request_id",
    "new_request_id",
    "redact",
    "request_id_context",
    "reset_request_id",
    "sanitize_request_id",
    "set_request_id",
]
