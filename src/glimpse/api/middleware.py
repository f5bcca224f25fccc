"""ASGI middleware: request ids, metrics and the access log; admission from the headers; body limits."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import anyio
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from glimpse.api.admission import Admission, RequestHead
from glimpse.api.context import RequestContext, request_context
from glimpse.api.errors import error_response
from glimpse.api.security import record_audit
from glimpse.errors import GlimpseError, NotReady, RequestTimeout, RequestTooLarge
from glimpse.guard import AuditLog
from glimpse.obs import Metrics, request_id_context

if TYPE_CHECKING:
    from glimpse.api.state import AppState

__all__ = [
    "SECURITY_HEADERS",
    "AdmissionMiddleware",
    "BodyLimitMiddleware",
    "RequestObserverMiddleware",
    "SecurityHeadersMiddleware",
]

logger = logging.getLogger("glimpse.access")

_QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/health", "/metrics"})
_PAGE_ROUTES = frozenset({"/", "/static"})


def _route_template(scope: Scope, context: RequestContext) -> str | None:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    # A Mount (the page's /static files) sets no "route", only the endpoint it handed over to.
    if isinstance(scope.get("endpoint"), StaticFiles):
        return "/static"
    # Refused by admission before routing: it names the API route it matched.
    return context.route_path


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
        context = RequestContext.from_scope(scope)
        context.attach(scope)
        request_id = context.request_id
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
                route = _route_template(scope, context)
                self.metrics.observe_request(route, status, elapsed)
                if route not in _QUIET_ROUTES and route not in _PAGE_ROUTES:
                    client = scope.get("client")
                    host = client[0] if client else None
                    try:
                        record_audit(self.audit, context, host, route or "unmatched", status, elapsed)
                    except Exception:  # a record that cannot be built must not fail the response
                        logger.exception("audit record could not be built")
                        self.metrics.audit_failures.labels(reason="build").inc()
                if route not in _QUIET_ROUTES:
                    logger.info(
                        "request",
                        extra={
                            "method": scope.get("method"),
                            "route": route or "unmatched",
                            "status": status,
                            "duration_ms": round(elapsed * 1000, 1),
                            "cache": None if context.cache is None else context.cache.value,
                        },
                    )


class _BoundedBody:
    """One request's body, read under a size cap and a deadline.

    When the body breaks a bound, the error response is sent from here (FastAPI
    would turn an exception raised while it reads the body into a 400) and the
    app then sees a disconnect; whatever it tries to send afterwards is dropped.
    """

    def __init__(
        self, scope: Scope, receive: Receive, send: Send, max_bytes: int, deadline: float | None
    ) -> None:
        self.scope, self._receive, self._send = scope, receive, send
        self.max_bytes = max_bytes
        self.deadline = deadline
        self.seen = 0
        self.body_done = False
        self.refused = False
        self.started = False

    async def send(self, message: Message) -> None:
        if self.refused:
            return
        self.started = self.started or message["type"] == "http.response.start"
        await self._send(message)

    async def _refuse(self, exc: GlimpseError) -> Message:
        if self.started:
            raise exc
        self.refused = True
        await error_response(exc)(self.scope, self._receive, self._send)
        return {"type": "http.disconnect"}

    async def receive(self) -> Message:
        if self.refused:
            return {"type": "http.disconnect"}
        if self.body_done or self.deadline is None:
            message = await self._receive()  # after the body only the disconnect watch waits here
        else:
            try:
                with anyio.fail_after(max(0.0, self.deadline - time.monotonic())):
                    message = await self._receive()
            except TimeoutError:
                return await self._refuse(RequestTimeout("The request body did not arrive in time."))
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            self.body_done = not message.get("more_body", False)
            if self.seen > self.max_bytes:
                return await self._refuse(_too_large(self.max_bytes))
        return message


def _too_large(max_bytes: int) -> RequestTooLarge:
    return RequestTooLarge(f"The request body is larger than {max_bytes} bytes.")


class BodyLimitMiddleware:
    """413 as soon as the body passes its limit; 408 if it is not all in within ``read_timeout_s``.

    ``route_limits`` gives some paths their own limit instead of ``max_bytes``: smaller (an
    upload of one image needs less room than a chat with four) or, for a batch input file,
    larger; a declared ``Content-Length`` above the limit is refused from the headers, before
    any of the body is read.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        read_timeout_s: float | None = None,
        route_limits: Mapping[str, int] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout_s = read_timeout_s
        self.route_limits = dict(route_limits or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.route_limits.get(scope.get("path", ""), self.max_bytes)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await error_response(_too_large(limit))(scope, receive, send)
            return
        deadline = None if self.read_timeout_s is None else time.monotonic() + self.read_timeout_s
        body = _BoundedBody(scope, receive, send, limit, deadline)
        await self.app(scope, body.receive, body.send)


class AdmissionMiddleware:
    """Refuse from the request's head whatever would be refused anyway (see ``api.admission``).

    Sits inside ``RequestObserverMiddleware`` (which stamps the arrival time and records
    every refusal) and outside the body limit, so a refused body is never read. An
    admitted generation counts against engine capacity until the last byte of its response
    is handed to the server.
    """

    def __init__(self, app: ASGIApp, admission: Admission, app_state: Callable[[], AppState | None]) -> None:
        self.app = app
        self.admission = admission
        self.app_state = app_state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        head = RequestHead.from_scope(scope)
        policy = self.admission.policy(head.method, head.path)
        state = self.app_state()
        context = request_context(scope)
        if policy is not None:  # the table's paths are the routes' own: metrics and logs name them
            context.route_path = self.admission.route_label(head.path)
        try:
            self.admission.check_host(head)
            if policy is not None:
                if state is None:  # before the lifespan has built the state: nothing can be served
                    raise NotReady("The server is starting; try again shortly.", retry_after=1)
                await self.admission.admit(head, policy, state, context)
        except GlimpseError as exc:
            if state is not None:
                state.metrics.observe_rejected(exc.code)
            await error_response(exc)(scope, receive, send)
            return
        if policy is None or not policy.generates:
            await self.app(scope, receive, send)
            return
        releasing = _ReleaseOnLastByte(send, self.admission)
        try:
            await self.app(scope, receive, releasing.send)
        finally:
            releasing.release()


class _ReleaseOnLastByte:
    """Gives an admitted generation's capacity back as its response's last byte is handed over.

    Not when the app returns: a client that sends its next request the moment it has the
    answer (a closed loop at exactly the capacity) must find the place already free, and an
    app may still await after its last send (Starlette's streaming response waits for its
    disconnect listener to end).
    """

    def __init__(self, send: Send, admission: Admission) -> None:
        self._send = send
        self._admission = admission
        self._held = True

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.release()
        await self._send(message)

    def release(self) -> None:
        if self._held:
            self._held = False
            self._admission.release()


#: The web page loads only its own files; images are previewed from data: and blob: URLs.
_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'"
)
SECURITY_HEADERS = (
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
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in present]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)
