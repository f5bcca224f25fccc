"""Admission from the headers: a request that will be refused is refused before its body is read.

Refusing late is what made overload collapse: a request that was going to get 401,
403, 429 or 503 had its JSON parsed, its images decoded and its text screened first,
and that CPU was taken from the requests being served. Everything that can be
decided from the request line and headers is decided here, in this order, cheapest
first: the ``Host`` header (DNS rebinding), cross-site browser requests when auth is
off, the drain, the credential and its scope, engine capacity, then the caller's
rate limit and quota. Only then does the body limit let the body in.

The route table below is the one place that says which scope a route needs and
how large its body may be. The caller found here is left on the request's context
(``api.context``), where ``api.security.authorize`` and the audit record read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from starlette.types import Scope

from glimpse.api.context import RequestContext, request_context
from glimpse.config import Settings
from glimpse.errors import Forbidden, InvalidRequest, NotReady, Overloaded
from glimpse.guard import Principal, is_loopback
from glimpse.guard.scopes import ADMIN_SCOPE

if TYPE_CHECKING:
    from glimpse.api.state import AppState
    from glimpse.engine.protocol import EngineHealth

__all__ = ["Admission", "EngineLoad", "RequestHead", "RoutePolicy", "route_policies"]

#: Headroom for the text of a request (questions, history, JSON or multipart framing) on top of its images.
TEXT_ALLOWANCE_BYTES = 1024 * 1024
#: Seconds a client is asked to wait after a 503 for capacity.
OVERLOADED_RETRY_AFTER_S = 1
#: What a loopback-bound server answers to by default (any port).
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


@dataclass(slots=True, frozen=True)
class EngineLoad:
    """What the batch worker needs to fill only the places live requests leave free."""

    #: Generations the engine runs together; beyond them, admitted ones wait in its queue.
    slots: int
    #: Generations admitted and not finished (live and batch), counted here or by the engine.
    busy: int
    #: Live generations admitted here and not finished (batch lines are not admitted here).
    live: int


@dataclass(slots=True, frozen=True)
class RoutePolicy:
    """What admission needs to know about one API route."""

    scope: str | None  # the scope a credential must hold; None: any valid credential
    max_body_bytes: int
    generates: bool  # runs the model, so it counts against engine capacity


def _base64_size(raw: int) -> int:
    return 4 * ((raw + 2) // 3)


def route_policies(settings: Settings) -> dict[tuple[str, str], RoutePolicy]:
    """Every API route by (method, path); a route missing here is checked late, by ``authorize``."""
    media, ceiling = settings.media, settings.server.max_body_bytes
    image_json = _base64_size(media.max_image_bytes)

    def limit(images_bytes: int) -> int:
        return min(ceiling, images_bytes + TEXT_ALLOWANCE_BYTES)

    return {
        ("POST", "/v1/chat/completions"): RoutePolicy(
            "chat", limit(media.max_images_per_request * image_json), generates=True
        ),
        ("POST", "/infer"): RoutePolicy("infer", limit(image_json), generates=True),
        ("POST", "/v1/analyze"): RoutePolicy("analyze", limit(media.max_image_bytes), generates=True),
        ("GET", "/v1/models"): RoutePolicy(None, limit(0), generates=False),
        ("POST", "/v1/load_lora_adapter"): RoutePolicy(ADMIN_SCOPE, limit(0), generates=False),
        ("POST", "/v1/unload_lora_adapter"): RoutePolicy(ADMIN_SCOPE, limit(0), generates=False),
        ("POST", "/v1/files"): RoutePolicy(
            "batch", settings.batch.max_file_bytes + TEXT_ALLOWANCE_BYTES, generates=False
        ),
        ("GET", "/v1/files"): RoutePolicy("batch", limit(0), generates=False),
        ("POST", "/v1/batches"): RoutePolicy("batch", limit(0), generates=False),
        ("GET", "/v1/batches"): RoutePolicy("batch", limit(0), generates=False),
    }


#: Routes under these prefixes (``/v1/files/{file_id}``, ``/v1/batches/{batch_id}/cancel``) need a
#: scope whatever their method; their label in metrics and logs is the prefix, never an id.
PREFIX_POLICIES = {
    "/v1/files/": RoutePolicy("batch", TEXT_ALLOWANCE_BYTES, generates=False),
    "/v1/batches/": RoutePolicy("batch", TEXT_ALLOWANCE_BYTES, generates=False),
}


@dataclass(slots=True, frozen=True)
class RequestHead:
    """The parts of a request admission reads: no body."""

    method: str
    path: str
    headers: Mapping[str, str]  # lower-case names
    client_host: str
    arrived_at: float | None

    @classmethod
    def from_scope(cls, scope: Scope) -> RequestHead:
        raw: list[tuple[bytes, bytes]] = scope.get("headers") or []
        client = scope.get("client")
        return cls(
            method=str(scope.get("method", "")),
            path=str(scope.get("path", "")),
            headers={k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw},
            client_host=str(client[0]) if client else "unknown",
            arrived_at=request_context(scope).arrived_at,
        )


def _host_name(host: str) -> str:
    """The name of a ``Host`` header without its port: ``[::1]:8080`` -> ``::1``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return name.rstrip(".")  # "localhost." is localhost


class Admission:
    """The checks made from a request's head; the count of generations admitted and not finished."""

    def __init__(self, settings: Settings) -> None:
        self.policies = route_policies(settings)
        server = settings.server
        allowed = server.allowed_hosts
        if allowed is None:
            allowed = LOOPBACK_HOSTS if is_loopback(server.host) else ("*",)
        self._any_host = "*" in allowed
        self._hosts = frozenset(_host_name(h) for h in allowed if not h.startswith("*."))
        self._host_suffixes = tuple(h[1:].lower() for h in allowed if h.startswith("*."))
        self._cors_origins = frozenset(o.rstrip("/").lower() for o in settings.guard.cors_origins)
        engine = settings.engine
        #: Whether the engine bounds what it admits (``HFEngine._admit``: waiting + running),
        #: a bound it reports in its health once the model is loaded and the batch sized;
        #: with ``max_batch_size`` set, the settings already say it.
        self._bounded = engine.kind == "hf"
        self._configured = (
            engine.max_queue + engine.max_batch_size if engine.max_batch_size is not None else None
        )
        self.in_flight = 0

    def policy(self, method: str, path: str) -> RoutePolicy | None:
        found = self.policies.get((method, path))
        if found is None:
            found = next((p for prefix, p in PREFIX_POLICIES.items() if path.startswith(prefix)), None)
        return found

    @staticmethod
    def route_label(path: str) -> str:
        """The name a route admission matched goes by in metrics and logs (no ids in labels)."""
        prefix = next((prefix for prefix in PREFIX_POLICIES if path.startswith(prefix)), None)
        return path if prefix is None else f"{prefix}*"

    def body_limits(self) -> dict[str, int]:
        """The body limit of each API path (for ``BodyLimitMiddleware``)."""
        return {path: policy.max_body_bytes for (_, path), policy in self.policies.items()}

    def check_host(self, head: RequestHead) -> None:
        """400 for a ``Host`` this server does not answer to: a DNS-rebinding page is refused."""
        if self._any_host:
            return
        host = head.headers.get("host")
        if host is None:  # HTTP/1.0 without Host: not a browser, so not a rebinding page
            return
        name = _host_name(host)
        if name in self._hosts or any(name.endswith(suffix) for suffix in self._host_suffixes):
            return
        raise InvalidRequest(
            "Unknown Host header; this server answers only to its configured names "
            "(GLIMPSE_SERVER__ALLOWED_HOSTS)."
        )

    def check_same_site(self, head: RequestHead) -> None:
        """403 for a browser request sent by another site's page (used while auth is off).

        Browsers send ``Origin`` on every cross-origin request that can change anything and
        ``Sec-Fetch-Site`` on all of them; clients that send neither (curl, SDKs) are not
        browsers driven by a stranger's page, and pass.
        """
        origin = head.headers.get("origin")
        if origin is not None:
            if origin.rstrip("/").lower() in self._cors_origins:
                return
            if self._same_origin(origin, head.headers.get("host", "")):
                return
        elif head.headers.get("sec-fetch-site", "same-origin") in {"same-origin", "none"}:
            return
        raise Forbidden(
            "Cross-site requests are refused while this server has no authentication; "
            "list the page's origin in GLIMPSE_GUARD__CORS_ORIGINS or configure API keys."
        )

    @staticmethod
    def _same_origin(origin: str, host: str) -> bool:
        netloc = urlsplit(origin).netloc.lower()
        host = host.strip().lower()
        if not netloc or not host:
            return False
        if netloc == host:
            return True
        # A proxy that forwards "Host: $host" drops the port the browser used (nginx).
        return ":" not in host.rsplit("]", 1)[-1] and _host_name(netloc) == _host_name(host)

    def at_capacity(self, state: AppState) -> bool:
        """Whether a new generation would find the engine full (ready or not: not-ready is admission's)."""
        if not self._bounded:
            return False
        health = state.engine.health()
        capacity = self._capacity(health)
        return capacity is not None and health.ready and self._busy(health) >= capacity

    def check_capacity(self, state: AppState) -> None:
        """503 at once when the engine could not take the request (the engine's own rule, early)."""
        if not self._bounded:
            return
        health = state.engine.health()
        if not health.ready:
            raise NotReady(
                f"The model is not ready ({health.detail}); try again shortly.",
                retry_after=2,
            )
        busy = self._busy(health)
        capacity = self._capacity(health)
        if capacity is not None and busy >= capacity:
            raise Overloaded(
                f"The server is at capacity ({busy} requests admitted); retry shortly.",
                retry_after=OVERLOADED_RETRY_AFTER_S,
            )

    def load(self, state: AppState) -> EngineLoad | None:
        """How full the engine's running batch is; None if nothing bounds it."""
        if not self._bounded:
            return None
        health = state.engine.health()
        capacity = self._capacity(health)
        if capacity is None:
            return None
        slots = health.slots if health.slots is not None else capacity
        return EngineLoad(slots=slots, busy=self._busy(health), live=self.in_flight)

    def _capacity(self, health: EngineHealth) -> int | None:
        return health.capacity if health.capacity is not None else self._configured

    def _busy(self, health: EngineHealth) -> int:
        """Generations admitted and not finished, counted here or by the engine, whichever is more."""
        return max(self.in_flight, health.queue_depth + health.running)

    async def admit(
        self, head: RequestHead, policy: RoutePolicy, state: AppState, context: RequestContext
    ) -> None:
        """Leave the caller on ``context`` once every check that needs no body has passed.

        The caller is left there as soon as it is known, so a later refusal (403, 503, 429)
        is audited under the caller's name, not its address.

        An admitted generation holds one unit of capacity from here: the caller gives it back
        with ``release()`` once the response is sent. It is taken before the rate-limit and
        quota checks (which may wait on Redis), so concurrent arrivals cannot all pass the
        capacity check before any of them is counted.
        """
        auth = state.auth
        if not auth.auth_enabled:
            self.check_same_site(head)
        state.refuse_if_draining(head.arrived_at)
        principal = auth.authenticate(
            head.headers.get("authorization"), head.headers.get("x-api-key"), head.client_host
        )
        context.principal = principal
        if policy.scope is not None:
            principal.require_scope(policy.scope)
        if not policy.generates:
            await self._check_limits(state, principal)
            return
        self.check_capacity(state)
        self.in_flight += 1
        try:
            await self._check_limits(state, principal)
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Give back the capacity an admitted generation held."""
        self.in_flight -= 1

    @staticmethod
    async def _check_limits(state: AppState, principal: Principal) -> None:
        await state.limiter.check(principal)
        await state.quota.check(principal)
