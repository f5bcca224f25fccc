"""Between the Batch API's wire and its store: whose objects a caller sees, and lines as chat requests."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from pydantic import ValidationError

from glimpse.api.openai.schemas import ChatCompletionRequest
from glimpse.api.state import AppState
from glimpse.batches import BodyCheck
from glimpse.errors import InvalidRequest
from glimpse.guard import Principal

__all__ = [
    "CHAT_ENDPOINT",
    "COMPLETION_WINDOWS",
    "body_check",
    "chat_request",
    "owner_of",
    "principal_from_json",
    "principal_to_json",
]

#: The one endpoint a batch may name.
CHAT_ENDPOINT = "/v1/chat/completions"
#: The completion windows a batch may ask for (OpenAI's one), in seconds: a batch not finished
#: by then is ``expired``.
COMPLETION_WINDOWS: dict[str, int] = {"24h": 24 * 3600}


def owner_of(principal: Principal | None) -> str:
    """Whose files and batches a caller sees: its own with auth on; with auth off everyone's ("").

    Without credentials a caller is only an address, which is no identity: every caller
    of an open server shares one space, as they share the model.
    """
    if principal is None or principal.auth_method == "anonymous":
        return ""
    return principal.client_id


def principal_to_json(principal: Principal | None) -> str:
    """The submitter, kept with the batch: each line runs (quota, audit, cache partition) as them."""
    return json.dumps(None if principal is None else dataclasses.asdict(principal))


def principal_from_json(text: str) -> Principal | None:
    data = json.loads(text)
    if data is None:
        return None
    data["scopes"] = tuple(data.get("scopes") or ())
    return Principal(**data)


def chat_request(body: dict[str, Any] | str) -> ChatCompletionRequest:
    """A line's body as the chat route would accept it; ``InvalidRequest`` naming the first problem."""
    try:
        if isinstance(body, str):
            request = ChatCompletionRequest.model_validate_json(body)
        else:
            request = ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())) or "body"
        raise InvalidRequest(f"Invalid request at 'body.{where}': {first.get('msg')}", param=where) from None
    if request.stream:
        raise InvalidRequest("A batch line cannot stream; leave 'stream' out.", param="stream")
    return request


def body_check(state: AppState) -> BodyCheck:
    """Checks a line's body at batch creation: the schema, and the model it names."""

    def check(body: dict[str, Any]) -> None:
        state.check_model(chat_request(body).model)

    return check
