"""LoRA adapters over upstream servers: listed from their ``/v1/models``, requested by name where served."""

from __future__ import annotations

import dataclasses

import pytest

from glimpse.engine.protocol import AdapterInfo, AdapterServing
from glimpse.engine.upstream.health import MODELS_EVERY
from glimpse.errors import InvalidRequest

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


async def test_adapters_are_loaded_on_the_upstreams_not_here(h):
    with pytest.raises(InvalidRequest, match="load LoRA adapters on them"):
        await h.engine.load_adapter("x", "/somewhere")
