"""What the gateway checks itself before any upstream sees a request.

Whatever can be refused here is refused with a 400, never forwarded: a request that
makes every upstream fail costs them work and, before suspects were held (see
``_verdicts``), opened their circuits. The API's adapters check the same things; the
engine does not rely on them, because its output bounds are sized from ``max_tokens``.
"""

from __future__ import annotations

from glimpse.engine.max_tokens import resolve_max_tokens
from glimpse.engine.protocol import GenerationRequest
from glimpse.engine.sampling_config import check_sampling
from glimpse.errors import InvalidRequest

__all__ = ["check_request"]


def check_request(request: GenerationRequest, max_new_tokens_limit: int) -> None:
    if not request.messages:
        raise InvalidRequest("the request has no messages", param="messages")
    for index, message in enumerate(request.messages):
        if message.images and message.role != "user":
            # Chat templates render images in user turns only; nodes answered 500 for these.
            raise InvalidRequest(
                f"Images are accepted in 'user' messages only; messages[{index}] is a "
                f"'{message.role}' message with an image.",
                param=f"messages[{index}].content",
            )
    resolve_max_tokens(request.sampling.max_new_tokens, limit=max_new_tokens_limit)
    check_sampling(request.sampling)
