"""The one rule for a request's ``max_tokens`` (as vLLM's ``get_max_tokens``), and its refusals.

It is judged in stages, as facts arrive: the API knows the request's value, the
default and the server's limit; an engine learns the prompt's length (or a lower
bound of it, from the images' sizes) and how many tokens one request may hold.
Each stage calls this one function, so every refusal has one shape, names
``max_tokens`` (``param`` in the OpenAI error body) and says what to change.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from glimpse.errors import InvalidRequest, RequestTooLarge

__all__ = ["check_image_budget", "resolve_max_tokens"]

logger = logging.getLogger(__name__)


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


def check_image_budget(
    processor: Any, sizes: Sequence[tuple[int, int]], max_new_tokens: int, room: int
) -> None:
    """Refuse from the images' declared sizes (width, height) what would be refused after decoding.

    The processor counts each image's tokens from its size alone
    (``_get_num_multimodal_tokens``, as vLLM uses it); the text only adds tokens, so a
    request refused here could never have fitted. A processor without that helper
    checks nothing here (the engine still refuses after preprocessing).
    """
    count = getattr(processor, "_get_num_multimodal_tokens", None)
    if count is None or not sizes:
        return
    try:
        tokens = sum(int(n) for n in count(image_sizes=[(h, w) for w, h in sizes]).num_image_tokens)
    except (AttributeError, TypeError, ValueError) as exc:  # a processor without the helper's data
        logger.debug("cannot count image tokens from sizes: %r", exc)
        return
    resolve_max_tokens(max_new_tokens, prompt_tokens=tokens, room=room, counted="the images alone take")
