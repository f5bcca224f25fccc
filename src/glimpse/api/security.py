"""The guard at the HTTP boundary: who is calling, and the record of what they asked.

``guard`` itself is framework-free; admission (``api.admission``) leaves the caller
on the request's context, ``GenerationService`` what the prompt guard saw and the
tokens, and ``RequestObserverMiddleware`` writes the audit record from it once the
status is known.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request

from glimpse.api.admission import RequestHead, RoutePolicy
from glimpse.api.context import RequestContext, request_context
from glimpse.api.state import StateDep
from glimpse.guard import AuditLog, AuditRecord

__all__ = ["authorize", "record_audit"]


async def authorize(request: Request, state: StateDep) -> None:
    """Dependency of every API route: the caller was admitted from the headers (``api.admission``).

    ``AdmissionMiddleware`` authenticated the caller, checked its scope, capacity, rate
    limit and quota before the body was read, and left the ``Principal`` on the request's
    context. A route missing from the admission table is admitted here instead, with the
    same checks (late, after its body was parsed, but never left open).
    """
    context = request_context(request.scope)
    if context.principal is not None:
        return
    head = RequestHead.from_scope(request.scope)
    policy = RoutePolicy(scope=None, max_body_bytes=0, generates=False)
    await state.admission.admit(head, policy, state, context)


def record_audit(
    audit: AuditLog,
    context: RequestContext,
    client_host: str | None,
    route: str,
    status: int,
    latency_s: float,
) -> None:
    """Write one audit record for an API request, refused ones (401, 413, ...) included."""
    principal = context.principal
    details = context.audit
    screened: dict[str, Any] = (
        {}
        if details is None
        else {
            "prompt_texts": details.prompt_texts,
            "image_sha256": details.image_sha256,
            "image_dims": details.image_dims,
            "guard": details.guard,
            "model": details.adapter,
        }
    )
    audit.record(
        AuditRecord.build(
            request_id=context.request_id,
            client_id=principal.client_id if principal else f"ip:{client_host}",
            auth_method=principal.auth_method if principal else "none",
            route=route,
            status=status,
            latency_ms=latency_s * 1000,
            client_host=client_host,
            tokens_in=context.tokens_in,
            tokens_out=context.tokens_out,
            **screened,
        )
    )
