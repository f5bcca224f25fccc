"""Liveness and readiness probes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from glimpse.api.errors import error_responses
from glimpse.api.state import AppState, StateDep
from glimpse.errors import ClientError

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive and its event loop answers."""
    return {"status": "ok"}


def _trusted(request: Request, state: AppState) -> bool:
    """Whether this caller may read why the server is not ready.

    That detail names upstream servers and their last errors (or, while loading, the
    model's path and load error), so a caller sees it only with a valid credential.
    With auth off every caller is trusted alike (each is served everything else), and
    the detail is shown. A probe needs no credential: it gets the status either way.
    """
    host = request.client.host if request.client else "unknown"
    try:
        state.auth.authenticate(request.headers.get("authorization"), request.headers.get("x-api-key"), host)
    except ClientError:
        return False
    return True


@router.get("/health", include_in_schema=False)  # what vLLM-style gateways probe
@router.get("/readyz", responses=error_responses(503))
async def readyz(request: Request, state: StateDep) -> JSONResponse:
    """200 once the model is loaded and warmed up, 503 before that and while draining;
    why it is not ready only to an authenticated caller."""
    health = state.engine.health()
    if state.draining:
        return JSONResponse({"status": "draining"}, status_code=503, headers={"Retry-After": "1"})
    if not health.ready:
        body: dict[str, Any] = {"status": "not_ready"}
        if _trusted(request, state):
            body["detail"] = state.load_error or health.detail
        return JSONResponse(body, status_code=503, headers={"Retry-After": "2"})
    return JSONResponse(
        {
            "status": "ready",
            "model": state.engine.model_name,
            "queue_depth": health.queue_depth,
            "running": health.running,
            # For clients that size requests (the web page caps its max-tokens field with it).
            "max_tokens_limit": state.settings.engine.max_new_tokens_limit,
        }
    )
