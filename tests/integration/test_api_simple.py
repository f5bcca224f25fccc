from __future__ import annotations

import json
from collections.abc import AsyncIterator

from tests.fakes import FakeEngine
from tests.images import png_b64, png_bytes

from glimpse.engine.protocol import ImagePart


async def test_infer_answers_in_the_simple_shape(make_client):
    engine = FakeEngine()
    async with make_client(engine) as client:
        response = await client.post(
            "/infer", json={"image": png_b64(), "text": "what?", "max_new_tokens": 128}
        )
    assert response.status_code == 200
    assert response.json() == {"response": "hello world"}
    request = engine.requests[0]
    assert request.sampling.max_new_tokens == 128
    assert request.sampling.greedy
    assert isinstance(request.messages[0].content[0], ImagePart)


async def test_infer_errors(make_client):
    async with make_client(FakeEngine()) as client:
        bad_b64 = await client.post("/infer", json={"image": "***", "text": "q"})
        not_image = await client.post("/infer", json={"image": "aGVsbG8gd29ybGQ=", "text": "q"})
        missing = await client.post("/infer", json={"text": "q"})
        empty_text = await client.post("/infer", json={"image": png_b64(), "text": ""})
    assert bad_b64.status_code == 400
    assert bad_b64.json()["error"]["code"] == "invalid_image"
    assert not_image.status_code in (400, 415)
    assert missing.status_code == 422
    assert empty_text.status_code == 422


async def test_analyze_accepts_a_multipart_upload(make_client):
    engine = FakeEngine()
    async with make_client(engine) as client:
        response = await client.post(
            "/v1/analyze",
            files={"image": ("photo.bin", png_bytes(), "application/octet-stream")},
            data={"question": "what is it?", "max_new_tokens": "2"},
        )
    assert response.status_code == 200, response.text
    assert response.json() == {"response": "hello "}


async def test_analyze_refuses_a_non_image_named_like_one(make_client):
    async with make_client(FakeEngine()) as client:
        response = await client.post(
            "/v1/analyze",
            files={"image": ("cat.png", b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", "image/png")},
            data={"question": "q"},
        )
    assert response.status_code == 415


async def test_health_and_readiness(make_client):
    engine = FakeEngine(ready=False)
    async with make_client(engine) as client:
        assert (await client.get("/healthz")).status_code == 200
        not_ready = await client.get("/readyz")
        assert not_ready.status_code == 503
        assert not_ready.headers["retry-after"]
        engine.ready = True
        ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["max_tokens_limit"] == 4096  # what a client may ask for, by default


async def test_draining_refuses_new_requests_but_serves_those_that_arrived_before(make_client):
    async with make_client(FakeEngine()) as client:
        state = client.app.state.glimpse
        body = json.dumps({"image": png_b64(), "text": "what?"}).encode()

        async def body_sent_across_the_signal() -> AsyncIterator[bytes]:
            # The request has arrived (headers in) when the drain starts; its body follows.
            yield body[:10]
            state.start_draining()
            yield body[10:]

        in_progress = await client.post(
            "/infer", content=body_sent_across_the_signal(), headers={"Content-Type": "application/json"}
        )
        readiness = await client.get("/readyz")
        new = await client.post("/infer", json={"image": png_b64(), "text": "what?"})
    assert in_progress.status_code == 200, in_progress.text
    assert in_progress.json() == {"response": "hello world"}
    assert readiness.status_code == 503
    assert readiness.headers["retry-after"]
    assert new.status_code == 503
    assert new.headers["retry-after"] == "1"
    assert "shutting down" in new.json()["error"]["message"]
