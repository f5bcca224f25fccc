"""LoRA adapters over upstream servers: listed from their ``/v1/models``, requested by name where served."""

from __future__ import annotations

import dataclasses

import pytest

from glimpse.engine.protocol import AdapterInfo, AdapterServing
from glimpse.engine.upstream.health import MODELS_EVERY
from glimpse.errors import InvalidRequest, ModelNotFound, UpstreamError

from ._fakes import Harness, collect, make_request, text_of


@pytest.fixture
async def h():
    harness = Harness(hosts=("a", "b"))
    harness["b"].adapters = {"codes": "/adapters/codes"}
    await harness.engine.start()
    yield harness
    await harness.engine.stop()
    await harness.client.aclose()


async def test_adapters_are_listed_and_requests_go_where_they_are_served(h):
    engine = h.engine
    assert isinstance(engine, AdapterServing)
    assert engine.adapters() == [AdapterInfo("codes", "/adapters/codes", "GLM-Test")]
    assert h.upstream("b").model == "served/GLM-Test"  # the adapter is not taken for the base model
    for n in range(3):
        request = dataclasses.replace(make_request(f"r{n}"), adapter="codes")
        assert text_of(await collect(engine, request)) == "Hello from b"
    assert [body["model"] for body in h["b"].chat_bodies] == ["codes"] * 3
    assert h["a"].chat_bodies == []
    await collect(engine, make_request("base"))
    assert (h["a"].chat_bodies or h["b"].chat_bodies)[-1]["model"] == "served/GLM-Test"


async def test_the_list_follows_the_upstreams(h):
    h["b"].adapters = {}
    h["a"].adapters = {"other": "/x"}
    for _ in range(MODELS_EVERY):
        await h.engine.health_checker.check_all()
    assert [a.name for a in h.engine.adapters()] == ["other"]


async def test_a_load_goes_to_every_upstream_and_says_what_each_did(h):
    h["a"].lora_folders = {"/srv/codes2"}  # b's machine has no such folder
    info = await h.engine.load_adapter("codes2", "/srv/codes2")
    assert [(p.server, p.ok, p.status) for p in info.placements] == [
        ("http://a:8000", True, 200),
        ("http://b:8000", False, 400),
    ]
    assert info.placements[1].message == "No adapter found for /srv/codes2"
    assert h["a"].lora_bodies == h["b"].lora_bodies == [{"lora_name": "codes2", "lora_path": "/srv/codes2"}]
    assert "codes2" in [a.name for a in h.engine.adapters()]  # listed at once, not after the next read
    for n in range(3):  # only where it loaded
        request = dataclasses.replace(make_request(f"r{n}"), adapter="codes2")
        assert text_of(await collect(h.engine, request)) == "Hello from a"
    h["b"].lora_folders = {"/srv/codes2"}
    again = await h.engine.load_adapter("codes2", "/srv/codes2")  # completes a partial load
    assert [(p.ok, p.status) for p in again.placements] == [(False, 400), (True, 200)]
    assert "codes2" in h.upstream("b").adapters


async def test_nothing_loaded_anywhere_is_an_error_naming_each_upstream(h):
    with pytest.raises(InvalidRequest, match="No upstream loaded .* http://a:8000: No adapter found"):
        await h.engine.load_adapter("x", "/nowhere")
    h["b"].down = True
    h["a"].lora_folders = set()
    with pytest.raises(UpstreamError, match="http://b:8000: no answer"):
        await h.engine.load_adapter("x", "/nowhere")
    with pytest.raises(InvalidRequest, match="base model's name"):
        await h.engine.load_adapter("GLM-Test", "/srv/x")
    assert not [body for host in "ab" for body in h[host].lora_bodies if body["lora_name"] == "GLM-Test"]


async def test_an_unload_goes_to_every_upstream(h):
    placements = await h.engine.unload_adapter("codes")
    assert [(p.ok, p.status) for p in placements] == [(False, 404), (True, 200)]
    assert h.engine.adapter("codes") is None
    with pytest.raises(ModelNotFound, match="No upstream serves a LoRA adapter named 'codes'"):
        await h.engine.unload_adapter("codes")
