"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from glimpse.api.errors import error_responses
from glimpse.api.state import StateDep

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive and its event loop answers."""
    return {"status": "ok"}


@router.get("/health", include_in_schema=False)  # what vLLM-style gateways probe
@router.get("/readyz", responses=error_responses(503))
async def readyz(state: StateDep) -> JSONResponse:
    """200 once the model is loaded and warmed up, 503 before that and while draining."""
    health = state.engine.health()
    if state.draining:
        return JSONResponse({"status": "draining"}, status_code=503, headers={"Retry-After": "1"})
    if not health.ready:
        detail = state.load_error or health.detail
        return JSONResponse(
            {"status": "not_ready", "detail": detail}, status_code=503, headers={"Retry-After": "2"}
        )
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
