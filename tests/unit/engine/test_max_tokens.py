"""``resolve_max_tokens``: the one rule for max_tokens, and refusals that all name it."""

from __future__ import annotations

import pytest

from glimpse.config import EngineSettings
from glimpse.engine.max_tokens import resolve_max_tokens
from glimpse.errors import GlimpseError, InvalidRequest, RequestTooLarge


def test_the_request_value_wins_and_the_default_fills_in():
    assert resolve_max_tokens(7, default=512, limit=4096) == 7
    assert resolve_max_tokens(None, default=512, limit=4096) == 512
    assert resolve_max_tokens(4096, limit=4096) == 4096


def test_the_default_is_the_servers_setting():
    settings = EngineSettings()
    assert (
        resolve_max_tokens(None, default=settings.default_max_new_tokens) == settings.default_max_new_tokens
    )


def test_room_is_checked_once_the_prompt_is_known():
    assert resolve_max_tokens(10, prompt_tokens=90, room=100) == 10  # exactly full fits


@pytest.mark.parametrize(
    ("call", "kind", "message"),
    [
        (lambda: resolve_max_tokens(0, limit=10), InvalidRequest, "max_tokens is 0, below the minimum of 1."),
        (lambda: resolve_max_tokens(-5), InvalidRequest, "max_tokens is -5, below the minimum of 1."),
        (
            lambda: resolve_max_tokens(11, limit=10),
            InvalidRequest,
            "max_tokens is 11, above this server's limit of 10.",
        ),
        (
            lambda: resolve_max_tokens(None, default=11, limit=10),
            InvalidRequest,
            "max_tokens is 11, above this server's limit of 10.",
        ),
        (
            lambda: resolve_max_tokens(11, prompt_tokens=90, room=100),
            RequestTooLarge,
            "max_tokens is 11 and the prompt takes 90 tokens: more than the 100 tokens",
        ),
        (
            lambda: resolve_max_tokens(11, prompt_tokens=90, room=100, counted="the images alone take"),
            RequestTooLarge,
            "max_tokens is 11 and the images alone take 90 tokens",
        ),
    ],
)
def test_every_refusal_names_max_tokens(call, kind, message):
    with pytest.raises(GlimpseError) as caught:
        call()
    assert type(caught.value) is kind
    assert caught.value.param == "max_tokens"
    assert caught.value.message.startswith(message)


def test_no_value_and_no_default_is_a_programming_error_not_a_client_one():
    with pytest.raises(ValueError, match="no default"):
        resolve_max_tokens(None)
