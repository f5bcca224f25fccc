"""ASGI middleware: request ids, metrics and the access log; the streamed body-size limit."""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from glimpse.api.errors import error_response
from glimpse.api.security import record_audit
from glimpse.errors import RequestTooLarge
from glimpse.guard import AuditLog
from glimpse.obs import Metrics, request_id_context, sanitize_request_id

__all__ = ["BodyLimitMiddleware", "RequestObserverMiddleware", "SecurityHeadersMiddleware"]

logger = logging.getLogger("glimpse.access")

_QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/health", "/metrics"})
_PAGE_ROUTES = frozenset({"/", "/static"})


def _route_template(scope: Scope) -> str | None:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else None


class RequestObserverMiddleware:
    """Give every request an id (echoed as X-Request-ID), count it, and log one line for it."""

    def __init__(self, app: ASGIApp, metrics: Metrics, audit: AuditLog) -> None:
        self.app = app
        self.metrics = metrics
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = dict(scope.get("headers") or []).get(b"x-request-id")
        request_id = sanitize_request_id(raw.decode("latin-1") if raw else None)
        # A fresh per-request state: some servers hand every request the same lifespan dict.
        scope["state"] = {**scope.get("state", {}), "request_id": request_id}
        status = 500
        started = time.perf_counter()

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        self.metrics.http_requests_in_flight.inc()
        with request_id_context(request_id):
            try:
                await self.app(scope, receive, send_observed)
            finally:
                self.metrics.http_requests_in_flight.dec()
                elapsed = time.perf_counter() - started
                route = _route_template(scope)
                self.metrics.observe_request(route, status, elapsed)
                if route not in _QUIET_ROUTES and route not in _PAGE_ROUTES:
                    client = scope.get("client")
                    host = client[0] if client else None
                    record_audit(self.audit, scope["state"], host, route or "unmatched", status, elapsed)
                if route not in _QUIET_ROUTES:
                    logger.info(
                        "request",
                        extra={
                            "method": scope.get("method"),
                            "route": route or "unmatched",
                            "status": status,
                            "duration_ms": round(elapsed * 1000, 1),
                            "cache": scope["state"].get("cache"),
                        },
                    )


class BodyLimitMiddleware:
    """413 as soon as the declared or streamed body passes ``max_bytes``, without reading it all."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = RequestTooLarge(f"The request body is larger than {self.max_bytes} bytes.")
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await error_response(too_large)(scope, receive, send)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise too_large
            return message

        await self.app(scope, limited_receive, send)


#: The web page loads only its own files; images are previewed from data: and blob: URLs.
_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'"
)
_SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", _CSP.encode()),
)


class SecurityHeadersMiddleware:
    """Headers that keep the page (and any answer it renders) from being framed or sniffed."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in _SECURITY_HEADERS if k not in present]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)
