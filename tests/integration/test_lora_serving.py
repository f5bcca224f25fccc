"""Serving LoRA adapters beside the base model, in-process with the real engine and the tiny model.

The fine-tuned adapter answers colour questions with product codes; a random one only changes
answers. Mixed concurrent requests share the running batch, and each answer must equal the answer
the same request gets alone; the base model's answers must equal those of a server without adapters.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from asgi_lifespan import LifespanManager
from tests.integration.conftest import assert_engine_idle

from glimpse.api.app import create_app
from glimpse.config import BatchSettings, CacheSettings, EngineSettings, GuardSettings, Settings
from glimpse.engine.tiny_task import ask, draw, encode, random_picture
from glimpse.finetune.colour_codes import code_for
from glimpse.guard.keystore import hash_key

pytestmark = pytest.mark.slow

NO_CACHE = {"Cache-Control": "no-cache"}


def _settings(tmp_path, lora: tuple[str, ...] = (), guard: GuardSettings | None = None, **engine) -> Settings:
    return Settings(
        engine=EngineSettings(
            model="tiny",
            lora_modules=lora,
            preprocess_workers=0,
            max_batch_size=8,
            max_queue=32,
            warmup=False,
            **engine,
        ),
        guard=guard or GuardSettings(audit_log_path=tmp_path / "audit.sqlite3"),
        cache=CacheSettings(enabled=False),
        batch=BatchSettings(enabled=False),
    )


@asynccontextmanager
async def _client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    # Shutdown stops the engine process (it joins it): more than asgi-lifespan's default 5 s
    # on a loaded 2-core machine.
    async with LifespanManager(app, startup_timeout=300, shutdown_timeout=120) as manager:
        state = app.state.glimpse
        while not state.engine.health().ready:
            assert state.load_error is None, state.load_error
            await asyncio.sleep(0.05)
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", timeout=300) as client:
            yield client
            await assert_engine_idle(state.engine, 30)


def _cases(count: int) -> list[tuple[str, str, str]]:
    """(colour, data URL, question) of single shapes: colour is what the tiny model knows best."""
    rng = random.Random(11)
    cases = []
    for _ in range(count):
        picture = random_picture(rng, count=1, size=(rng.randint(64, 200), rng.randint(64, 200)))
        url = "data:image/png;base64," + base64.b64encode(encode(draw(picture), "PNG")).decode()
        cases.append((picture.color, url, ask("color", "en", rng).text))
    return cases


async def _chat(
    client: httpx.AsyncClient,
    model: str | None,
    url: str,
    question: str,
    headers: dict[str, str] | None = None,
) -> str:
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": question}]
    body: dict[str, object] = {"messages": [{"role": "user", "content": content}], "max_tokens": 12}
    if model is not None:
        body["model"] = model
    response = await client.post("/v1/chat/completions", json=body, headers={**NO_CACHE, **(headers or {})})
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["model"] == (model or "tiny")
    return str(data["choices"][0]["message"]["content"])


async def test_adapters_and_base_share_the_batch_and_answer_as_they_do_alone(
    tmp_path, colour_codes_adapter, random_tiny_adapter
):
    adapter, _report = colour_codes_adapter
    cases = _cases(8)
    models = [None, "codes", "noise"]
    requests = [(models[i % 3], *cases[i % 8][1:]) for i in range(24)]
    lora = (f"codes={adapter}", f"noise={random_tiny_adapter}")
    async with _client(_settings(tmp_path, lora)) as client:
        listed = (await client.get("/v1/models")).json()["data"]
        assert [(m["id"], m["parent"]) for m in listed] == [
            ("tiny", None),
            ("codes", "tiny"),
            ("noise", "tiny"),
        ]
        together = await asyncio.gather(*(_chat(client, *request) for request in requests))
        alone = [await _chat(client, *request) for request in requests]
        assert together == alone
        codes = [(answer, cases[i % 8][0]) for i, answer in enumerate(alone) if requests[i][0] == "codes"]
        right = sum(answer.strip() == code_for(colour) for answer, colour in codes)
        assert right >= 0.9 * len(codes), codes
        base = {
            request[1:]: answer for request, answer in zip(requests, alone, strict=True) if request[0] is None
        }
        noise = {
            request[1:]: answer
            for request, answer in zip(requests, alone, strict=True)
            if request[0] == "noise"
        }
        assert any(noise[key] != base[key] for key in base.keys() & noise.keys())
        unknown = await client.post(
            "/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "hi"}]}
        )
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == "model_not_found"
        colour, url, question = cases[0]
        payload = {"image": url, "text": question, "model": "codes", "max_new_tokens": 12}
        infer = await client.post("/infer", json=payload, headers=NO_CACHE)
        assert infer.json()["response"].strip() == code_for(colour)
        metrics = (await client.get("/metrics")).text
        assert 'glimpse_lora_requests_total{adapter="codes"}' in metrics
    async with _client(_settings(tmp_path)) as plain:
        for key, answer in base.items():
            assert await _chat(plain, None, *key) == answer


async def test_adapters_load_and_unload_at_run_time_with_an_admin_key(tmp_path, random_tiny_adapter):
    keys = tmp_path / "keys.json"
    keys.write_text(
        json.dumps(
            [
                {"name": "ops", "sha256": hash_key("admin-key"), "scopes": ["admin", "chat"]},
                {"name": "user", "sha256": hash_key("user-key")},
            ]
        )
    )
    guard = GuardSettings(api_keys_file=keys, audit_log_path=tmp_path / "audit.sqlite3")
    admin, user = {"Authorization": "Bearer admin-key"}, {"Authorization": "Bearer user-key"}
    _colour, url, question = _cases(1)[0]
    async with _client(_settings(tmp_path, guard=guard, enable_lora=True, max_loras=1)) as client:
        body = {"lora_name": "noise", "lora_path": str(random_tiny_adapter)}
        refused = await client.post("/v1/load_lora_adapter", json=body, headers=user)
        assert refused.status_code == 403
        loaded = await client.post("/v1/load_lora_adapter", json=body, headers=admin)
        assert loaded.status_code == 200, loaded.text
        assert loaded.json()["parent"] == "tiny"
        again = await client.post("/v1/load_lora_adapter", json=body, headers=admin)
        assert again.status_code == 400
        broken = await client.post(
            "/v1/load_lora_adapter", json={"lora_name": "bad", "lora_path": str(tmp_path)}, headers=admin
        )
        assert broken.status_code == 400
        assert "adapter_config.json" in broken.json()["error"]["message"]
        ids = [m["id"] for m in (await client.get("/v1/models", headers=user)).json()["data"]]
        assert ids == ["tiny", "noise"]
        answer = await _chat(client, "noise", url, question, user)
        assert answer
        gone = await client.post("/v1/unload_lora_adapter", json={"lora_name": "noise"}, headers=admin)
        assert gone.status_code == 200
        missing = await client.post(
            "/v1/chat/completions",
            json={"model": "noise", "messages": [{"role": "user", "content": "hi"}]},
            headers=user,
        )
        assert missing.status_code == 404
    async with _client(_settings(tmp_path, enable_lora=True)) as open_server:
        anonymous = await open_server.post("/v1/load_lora_adapter", json=body)
        assert anonymous.status_code == 403
