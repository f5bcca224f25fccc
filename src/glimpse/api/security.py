"""The guard at the HTTP boundary: who is calling, how often, what they ask, and the record of it.

``guard`` itself is framework-free; this module only reads headers and the peer
address, calls it, and leaves what the audit record needs on ``request.state``
for ``RequestObserverMiddleware`` to write once the status is known.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request

from glimpse.api.admission import RequestHead, RoutePolicy
from glimpse.api.state import StateDep
from glimpse.engine.protocol import GenerationRequest
from glimpse.errors import PromptRejected
from glimpse.guard import REFUSAL_MESSAGE, AuditLog, AuditRecord, GuardVerdict

__all__ = ["authorize", "charge_tokens", "record_audit", "screen_prompt"]


async def authorize(request: Request, state: StateDep) -> None:
    """Dependency of every API route: the caller was admitted from the headers (``api.admission``).

    ``AdmissionMiddleware`` authenticated the caller, checked its scope, capacity, rate
    limit and quota before the body was read, and left the ``Principal`` on the request's
    state. A route missing from the admission table is admitted here instead, with the
    same checks (late, after its body was parsed, but never left open).
    """
    if getattr(request.state, "principal", None) is not None:
        return
    head = RequestHead.from_scope(request.scope)
    policy = RoutePolicy(scope=None, max_body_bytes=0, generates=False)
    await state.admission.admit(head, policy, state, request.scope.setdefault("state", {}))


async def screen_prompt(request: Request, state: StateDep, gen: GenerationRequest) -> GuardVerdict:
    """Run the prompt-injection guard on the conversation; refuse in ``block`` mode.

    The texts are the engine request's, already sanitised by the adapter, so the
    guard screens exactly what the model will read; the guard screens each
    message and the user's messages joined (an injection split over two messages
    is one injection to the model). Assistant turns too: the client sends the whole
    history, so an "earlier answer" is client text like any other.
    """
    texts = [m.text for m in gen.messages if m.text]
    verdict = await state.guard.acheck(texts, [m.role for m in gen.messages if m.text])
    request.state.audit = {
        "prompt_texts": texts,
        "image_sha256": tuple(image.sha256 for image in gen.images),
        "image_dims": tuple(image.image.size for image in gen.images),
        "guard": verdict,
    }
    mode = state.settings.guard.prompt_guard
    if mode != "off":
        state.metrics.observe_guard("flagged" if verdict.flagged else "clean")
    if verdict.flagged and mode == "block":
        raise PromptRejected(REFUSAL_MESSAGE)
    return verdict


def record_audit(
    audit: AuditLog,
    scope_state: dict[str, Any],
    client_host: str | None,
    route: str,
    status: int,
    latency_s: float,
) -> None:
    """Write one audit record for an API request, refused ones (401, 413, ...) included."""
    principal = scope_state.get("principal")
    details: dict[str, Any] = scope_state.get("audit") or {}
    audit.record(
        AuditRecord.build(
            request_id=str(scope_state.get("request_id", "")),
            client_id=principal.client_id if principal else f"ip:{client_host}",
            auth_method=principal.auth_method if principal else "none",
            route=route,
            status=status,
            latency_ms=latency_s * 1000,
            client_host=client_host,
            tokens_in=scope_state.get("tokens_in"),
            tokens_out=scope_state.get("tokens_out"),
            **details,
        )
    )


async def charge_tokens(
    request: Request, state: StateDep, prompt_tokens: int, completion_tokens: int
) -> None:
    """Count a finished request's tokens against its client's daily quota, and for the audit record."""
    request.state.tokens_in, request.state.tokens_out = prompt_tokens, completion_tokens
    principal = getattr(request.state, "principal", None)
    if principal is not None:
        await state.quota.consume(principal, prompt_tokens + completion_tokens)
