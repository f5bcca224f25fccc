"""One request's context: what the middleware, admission, the routes and the service share.

``RequestObserverMiddleware`` makes it when a request arrives and reads it once the
response has been sent (access log, audit record); admission fills in the caller,
``GenerationService`` what the guard saw, the cache status and the tokens. It lives on
the ASGI scope under one key, so every layer finds the same object through
``request_context`` instead of agreeing on loose ``request.state`` names.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from starlette.types import Scope

from glimpse.guard import GuardVerdict, Principal
from glimpse.obs import new_request_id, sanitize_request_id

if TYPE_CHECKING:
    from glimpse.api.service import CacheStatus

__all__ = ["AuditDetails", "ContextDep", "RequestContext", "get_context", "request_context"]

#: The scope key the context lives under (an ASGI extension key: servers and Starlette leave it alone).
SCOPE_KEY = "glimpse.context"


@dataclass(slots=True, frozen=True)
class AuditDetails:
    """What the audit record keeps of a screened request (the texts as the model reads them)."""

    prompt_texts: tuple[str, ...]
    image_sha256: tuple[str, ...]
    image_dims: tuple[tuple[int, int], ...]
    guard: GuardVerdict
    #: The LoRA adapter asked for (``None``: the base model).
    adapter: str | None = None


@dataclass(slots=True)
class RequestContext:
    """Set from the request's head on arrival; the later fields are filled as the request is served."""

    request_id: str
    #: ``time.monotonic()`` on arrival: decides admission during a drain (``AppState.refuse_if_draining``).
    arrived_at: float
    #: ``Cache-Control: no-cache`` (or ``no-store``) from the client: skip the result cache.
    no_cache: bool = False
    #: The API route admission matched, for metrics and logs of a request refused before routing.
    route_path: str | None = None
    principal: Principal | None = None
    audit: AuditDetails | None = None
    cache: CacheStatus | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    #: ``time.monotonic()`` when the engine's first event for the request came in: the engine
    #: holds the request from then on (the batch runner counts the lines not yet there).
    first_event_at: float | None = None

    @classmethod
    def from_scope(cls, scope: Scope) -> RequestContext:
        raw: list[tuple[bytes, bytes]] = scope.get("headers") or []
        raw_id = dict(raw).get(b"x-request-id")
        cache_control = next((v for k, v in raw if k == b"cache-control"), b"").decode("latin-1").lower()
        return cls(
            request_id=sanitize_request_id(raw_id.decode("latin-1") if raw_id else None),
            arrived_at=time.monotonic(),
            no_cache="no-cache" in cache_control or "no-store" in cache_control,
        )

    def engine_request_id(self) -> str:
        """The request id made unique for the engine.

        Clients may reuse an X-Request-ID (retries, or one id for a whole conversation);
        two requests in flight at once must still be two engine requests.
        """
        return f"{self.request_id}.{new_request_id()[:8]}"

    def attach(self, scope: Scope) -> None:
        scope[SCOPE_KEY] = self


def request_context(scope: Scope) -> RequestContext:
    """The context ``RequestObserverMiddleware`` attached to this request's scope."""
    context = scope.get(SCOPE_KEY)
    if not isinstance(context, RequestContext):
        raise LookupError("no request context: the request did not come through RequestObserverMiddleware")
    return context


def get_context(request: Request) -> RequestContext:
    return request_context(request.scope)


#: A route's context, by dependency.
ContextDep = Annotated[RequestContext, Depends(get_context)]
