"""A gateway loads and unloads LoRA adapters on its upstreams and says what each one answered."""

from __future__ import annotations

import json

import httpx
import pytest
from tests.unit.engine.upstream._fakes import Cluster

from glimpse.config import EngineSettings, GuardSettings, Settings, UpstreamSettings
from glimpse.engine.upstream import UpstreamEngine
from glimpse.guard.keystore import hash_key

ADMIN = {"Authorization": "Bearer admin-key"}
USER = {"Authorization": "Bearer user-key"}


@pytest.fixture
async def gateway(make_client, tmp_path):
    keys = tmp_path / "keys.json"
    keys.write_text(
        json.dumps(
            [
                {"name": "ops", "sha256": hash_key("admin-key"), "scopes": ["admin", "chat"]},
                {"name": "user", "sha256": hash_key("user-key")},
            ]
        )
    )
    cluster = Cluster("a", "b")
    cluster["a"].lora_folders = {"/srv/adapters/codes"}
    engine_settings = EngineSettings(kind="upstream", model="GLM-Test")
    async with httpx.AsyncClient(transport=cluster.transport) as http:
        upstreams = UpstreamSettings(urls=("http://a:8000", "http://b:8000"), health_interval_s=3600)
        engine = UpstreamEngine(engine_settings, upstreams, http_client=http)
        guard = GuardSettings(api_keys_file=keys)
        async with make_client(engine, Settings(engine=engine_settings, guard=guard)) as client:
            yield client, cluster


async def test_load_and_unload_reach_every_upstream(gateway):
    client, cluster = gateway
    body = {"lora_name": "codes", "lora_path": "/srv/adapters/codes"}
    refused = await client.post("/v1/load_lora_adapter", json=body, headers=USER)
    assert refused.status_code == 403
    assert cluster["a"].lora_bodies == []
    loaded = await client.post("/v1/load_lora_adapter", json=body, headers=ADMIN)
    assert loaded.status_code == 200, loaded.text
    answer = loaded.json()
    assert (answer["id"], answer["parent"], answer["status"]) == ("codes", "GLM-Test", "loaded")
    assert answer["upstreams"] == [
        {
            "upstream": "http://a:8000",
            "ok": True,
            "status": 200,
            "message": "Success: LoRA adapter 'codes' added successfully.",
        },
        {
            "upstream": "http://b:8000",
            "ok": False,
            "status": 400,
            "message": "No adapter found for /srv/adapters/codes",
        },
    ]
    models = (await client.get("/v1/models", headers=USER)).json()["data"]
    assert ("codes", "GLM-Test") in [(m["id"], m["parent"]) for m in models]
    chat = {"model": "codes", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    answered = await client.post("/v1/chat/completions", json=chat, headers=USER)
    assert answered.status_code == 200, answered.text
    assert cluster["a"].chat_bodies[-1]["model"] == "codes"
    nowhere = await client.post(
        "/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "/missing"}, headers=ADMIN
    )
    assert nowhere.status_code == 400
    assert "http://b:8000: No adapter found for /missing" in nowhere.json()["error"]["message"]
    unloaded = await client.post("/v1/unload_lora_adapter", json={"lora_name": "codes"}, headers=ADMIN)
    assert unloaded.status_code == 200, unloaded.text
    assert [(u["ok"], u["status"]) for u in unloaded.json()["upstreams"]] == [(True, 200), (False, 404)]
    gone = await client.post("/v1/unload_lora_adapter", json={"lora_name": "codes"}, headers=ADMIN)
    assert gone.status_code == 404
    assert gone.json()["error"]["code"] == "model_not_found"
