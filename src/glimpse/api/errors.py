"""The one place where errors become HTTP responses.

``GlimpseError`` subclasses carry their status and code; FastAPI's validation
errors and Starlette's own HTTP errors (404, 405, ...) are rendered in the same
OpenAI error shape, so every error body a client sees looks alike. Anything
else is a bug: logged with its traceback, answered with a generic 500.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from glimpse.errors import GlimpseError

__all__ = ["ErrorBody", "error_body", "error_response", "error_responses", "install_error_handlers"]

logger = logging.getLogger(__name__)

_TYPE_BY_STATUS = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str
    param: str | None = None


class ErrorBody(BaseModel):
    """The one shape of every error response (OpenAI's)."""

    error: ErrorDetail


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI documentation of the error statuses a route can answer."""
    return {status: {"model": ErrorBody, "description": HTTPStatus(status).phrase} for status in statuses}


def error_body(message: str, error_type: str, code: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "code": code, "param": param}}


def error_response(exc: GlimpseError) -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    return JSONResponse(
        error_body(exc.message, exc.error_type, exc.code, exc.param),
        status_code=int(exc.status_code),
        headers=headers,
    )


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "The request body is not valid.", None
    first = errors[0]
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    where = ".".join(location) or "body"
    return f"Invalid request at '{where}': {first.get('msg', 'invalid value')}", where


async def _on_glimpse_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, GlimpseError)
    state = getattr(request.app.state, "glimpse", None)
    if state is not None:  # every refusal counted by its stable code (a bounded label set)
        state.metrics.observe_rejected(exc.code)
    if int(exc.status_code) >= 500:
        logger.error("request failed: %s", exc.message, exc_info=exc.__cause__ is not None)
    return error_response(exc)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message, param = _validation_message(exc)
    return JSONResponse(
        error_body(message, "invalid_request_error", "invalid_request", param),
        status_code=HTTPStatus.UNPROCESSABLE_ENTITY,
    )


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = HTTPStatus(exc.status_code)
    error_type = _TYPE_BY_STATUS.get(exc.status_code, "invalid_request_error")
    message = exc.detail if isinstance(exc.detail, str) and exc.detail else status.phrase
    return JSONResponse(
        error_body(message, error_type, status.phrase.lower().replace(" ", "_")),
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled error", exc_info=exc)
    return JSONResponse(
        error_body("The server hit an internal error.", "server_error", "internal_error"),
        status_code=HTTPStatus.INTERNAL_SERVER_ERROR,
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(GlimpseError, _on_glimpse_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
