"""Images are accepted in user turns only: elsewhere a 400 that names the message (F13).

The chat template renders images only in user turns; an image in a system or
assistant turn made the real engine fail with a 500, which an upstream gateway
counts against the node's circuit breaker (F2).
"""

from __future__ import annotations

import pytest
from tests.fakes import FakeEngine
from tests.images import data_url


def _image(url: str | None = None) -> dict[str, object]:
    return {"type": "image_url", "image_url": {"url": url or data_url()}}


@pytest.mark.parametrize("role", ["system", "developer", "assistant"])
async def test_image_outside_a_user_turn_is_a_400_naming_the_message(make_client, role):
    engine = FakeEngine()
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "hello"}]},
        {"role": role, "content": [{"type": "text", "text": "see this"}, _image()]},
        {"role": "user", "content": "what is it?"},
    ]
    async with make_client(engine) as client:
        response = await client.post(
            "/v1/chat/completions", json={"model": "fake-model", "messages": messages}
        )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["param"] == "messages[1].content"
    assert role in error["message"]
    assert engine.requests == []


async def test_the_role_check_comes_before_any_image_is_decoded(make_client):
    # A broken image in a system turn: the answer is about the role, not the image,
    # so no decoding work was done for a request that is refused anyway.
    messages = [
        {"role": "system", "content": [_image("data:image/png;base64,bm90IGFuIGltYWdl")]},
        {"role": "user", "content": [_image(), {"type": "text", "text": "what is it?"}]},
    ]
    async with make_client(FakeEngine()) as client:
        response = await client.post(
            "/v1/chat/completions", json={"model": "fake-model", "messages": messages}
        )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_request"
    assert response.json()["error"]["param"] == "messages[0].content"


async def test_images_in_user_turns_are_still_served(make_client):
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [_image(), {"type": "text", "text": "what is it?"}]},
        {"role": "assistant", "content": "a square"},
        {"role": "user", "content": [_image(), {"type": "text", "text": "and this?"}]},
    ]
    async with make_client(FakeEngine()) as client:
        response = await client.post(
            "/v1/chat/completions", json={"model": "fake-model", "messages": messages}
        )
    assert response.status_code == 200, response.text
