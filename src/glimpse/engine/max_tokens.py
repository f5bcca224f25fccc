"""The one rule for a request's ``max_tokens`` (as vLLM's ``get_max_tokens``), and its refusals.

It is judged in stages, as facts arrive: the API knows the request's value, the
default and the server's limit; an engine learns the prompt's length (or a lower
bound of it, from the images' sizes) and how many tokens one request may hold.
Each stage calls this one function, so every refusal has one shape, names
``max_tokens`` (``param`` in the OpenAI error body) and says what to change.
"""

from __future__ import annotations

from glimpse.errors import InvalidRequest, RequestTooLarge

__all__ = ["resolve_max_tokens"]


def resolve_max_tokens(
    requested: int | None,
    *,
    default: int | None = None,
    limit: int | None = None,
    prompt_tokens: int = 0,
    room: int | None = None,
    counted: str = "the prompt takes",
) -> int:
    """The answer's token budget: ``requested``, or ``default`` when the request left it out.

    Refused, naming ``max_tokens``: below 1 or above ``limit`` (``InvalidRequest``), or
    when ``prompt_tokens`` plus it exceed ``room``, the tokens one request may hold
    (``RequestTooLarge``). ``counted`` says what ``prompt_tokens`` stands for in that
    message (e.g. ``"the images alone take"`` when only a lower bound is known).
    """
    if requested is None:
        if default is None:
            raise ValueError("max_tokens was not given and there is no default")
        value = default
    else:
        value = requested
    if value < 1:
        raise InvalidRequest(f"max_tokens is {value}, below the minimum of 1.", param="max_tokens")
    if limit is not None and value > limit:
        raise InvalidRequest(
            f"max_tokens is {value}, above this server's limit of {limit}.", param="max_tokens"
        )
    if room is not None and prompt_tokens + value > room:
        raise RequestTooLarge(
            f"max_tokens is {value} and {counted} {prompt_tokens} tokens: more than the {room} tokens "
            "one request may use here. Ask for fewer tokens, or send a shorter prompt or smaller images.",
            param="max_tokens",
        )
    return value
