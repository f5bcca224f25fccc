"""The one error hierarchy of Glimpse.

Every failure that can reach a client is a ``GlimpseError`` that carries its own
HTTP status, a stable machine-readable ``code`` and, where waiting helps, a
``retry_after`` in seconds. Only ``glimpse.api.errors`` turns them into responses,
so layers below the API never import a web framework.

    GlimpseError [500]
    ├─ ClientError [400]
    │   ├─ InvalidRequest [400]
    │   │   └─ UnsupportedParameter [400]   an OpenAI parameter Glimpse does not implement
    │   ├─ InvalidImage [400]
    │   ├─ PromptRejected [400]
    │   ├─ Unauthorized [401]
    │   ├─ Forbidden [403]
    │   ├─ NotFound [404]
    │   │   ├─ ModelNotFound [404]
    │   │   └─ EndpointNotFound [404]
    │   ├─ RequestTooLarge [413]
    │   │   └─ ImageTooLarge [413]
    │   ├─ RequestTimeout [408]
    │   ├─ UnsupportedMediaType [415]
    │   └─ RateLimited [429, Retry-After]
    ├─ Overloaded [503, Retry-After]
    ├─ NotReady [503, Retry-After]
    ├─ ClientDisconnected [499]   the client went away; nobody reads the answer
    ├─ DeadlineExceeded [504]
    ├─ UpstreamError [502]
    │   └─ UpstreamTimeout [504]
    ├─ EngineRequestError [500]   one request failed, the engine is fine
    ├─ EngineDead [503]           the engine cannot serve anything any more
    └─ ModelLoadError [500]       start-up: the model cannot be found or loaded (CLI exit 2)
        └─ QuantizationUnsupported  the asked weight quantization cannot run here
"""

from __future__ import annotations

from http import HTTPStatus
from typing import ClassVar

__all__ = [
    "ClientDisconnected",
    "ClientError",
    "DeadlineExceeded",
    "EngineDead",
    "EndpointNotFound",
    "EngineRequestError",
    "Forbidden",
    "GlimpseError",
    "ImageTooLarge",
    "InvalidImage",
    "InvalidRequest",
    "ModelNotFound",
    "NotFound",
    "ModelLoadError",
    "NotReady",
    "Overloaded",
    "PromptRejected",
    "QuantizationUnsupported",
    "RateLimited",
    "RequestTimeout",
    "RequestTooLarge",
    "Unauthorized",
    "UnsupportedMediaType",
    "UnsupportedParameter",
    "UpstreamError",
    "UpstreamTimeout",
]


class GlimpseError(Exception):
    """Root of every error Glimpse raises on purpose."""

    status_code: ClassVar[int] = HTTPStatus.INTERNAL_SERVER_ERROR
    code: ClassVar[str] = "internal_error"
    error_type: ClassVar[str] = "server_error"

    def __init__(self, message: str, *, retry_after: int | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.param = param


class ClientError(GlimpseError):
    """The request itself is wrong; retrying it unchanged will fail again."""

    status_code = HTTPStatus.BAD_REQUEST
    code = "invalid_request"
    error_type = "invalid_request_error"


class InvalidRequest(ClientError):
    code = "invalid_request"


class UnsupportedParameter(InvalidRequest):
    """A parameter (OpenAI's) that Glimpse does not implement: refused, never silently ignored."""

    code = "unsupported_parameter"


class InvalidImage(ClientError):
    code = "invalid_image"


class PromptRejected(ClientError):
    code = "prompt_rejected"


class Unauthorized(ClientError):
    status_code = HTTPStatus.UNAUTHORIZED
    code = "invalid_api_key"
    error_type = "authentication_error"


class Forbidden(ClientError):
    status_code = HTTPStatus.FORBIDDEN
    code = "forbidden"
    error_type = "permission_error"


class NotFound(ClientError):
    """No such object, or not one the caller may see (another key's file or batch looks absent)."""

    status_code = HTTPStatus.NOT_FOUND
    code = "not_found"
    error_type = "not_found_error"


class ModelNotFound(NotFound):
    code = "model_not_found"


class EndpointNotFound(NotFound):
    """An API path Glimpse does not serve (OpenAI's ``/v1/completions``, ``/v1/responses``)."""


class RequestTooLarge(ClientError):
    status_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    code = "request_too_large"


class ImageTooLarge(RequestTooLarge):
    code = "image_too_large"


class RequestTimeout(ClientError):
    """The client did not send its request body in time (a stalled or trickling upload)."""

    status_code = HTTPStatus.REQUEST_TIMEOUT
    code = "request_timeout"


class UnsupportedMediaType(ClientError):
    status_code = HTTPStatus.UNSUPPORTED_MEDIA_TYPE
    code = "unsupported_media_type"


class RateLimited(ClientError):
    status_code = HTTPStatus.TOO_MANY_REQUESTS
    code = "rate_limited"
    error_type = "rate_limit_error"


class Overloaded(GlimpseError):
    """The queue is full: come back later (the request was not admitted)."""

    status_code = HTTPStatus.SERVICE_UNAVAILABLE
    code = "overloaded"


class NotReady(GlimpseError):
    """The model is still loading, or the server is draining for shutdown."""

    status_code = HTTPStatus.SERVICE_UNAVAILABLE
    code = "not_ready"


class ClientDisconnected(GlimpseError):
    """The client closed the connection first; its work was cancelled.

    499 is nginx's "client closed request": it never reaches the client, but logs
    and metrics show what happened instead of a 500.
    """

    status_code = 499
    code = "client_closed_request"


class DeadlineExceeded(GlimpseError):
    status_code = HTTPStatus.GATEWAY_TIMEOUT
    code = "deadline_exceeded"


class UpstreamError(GlimpseError):
    status_code = HTTPStatus.BAD_GATEWAY
    code = "upstream_error"


class UpstreamTimeout(UpstreamError):
    status_code = HTTPStatus.GATEWAY_TIMEOUT
    code = "upstream_timeout"


class EngineRequestError(GlimpseError):
    code = "engine_error"


class EngineDead(GlimpseError):
    status_code = HTTPStatus.SERVICE_UNAVAILABLE
    code = "engine_dead"


class ModelLoadError(GlimpseError):
    """The model could not be found or loaded; raised at start-up, shown by the CLI."""

    code = "model_load_error"


class QuantizationUnsupported(ModelLoadError):
    """The quantization method asked for cannot run here (device, dtype or library); raised at start-up."""

    code = "quantization_unsupported"
