"""The Batch API's queue in-process: two apps sharing one Redis work off one batch, a batch past its
completion window expires, and a Redis that is down answers 503."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.fakes import FakeEngine
from tests.integration.batch_client import (
    FAST,
    batch_settings,
    jsonl,
    request_line,
    result_lines,
    submit,
    upload,
    wait_for,
)
from tests.redis_server import RedisProcess, running_redis

from glimpse.api.batch import adapter
from glimpse.config import QueueSettings, Settings


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisProcess]:
    with running_redis(tmp_path) as server:
        yield server


def _on_redis(url: str, **batch) -> Settings:
    queue = QueueSettings(redis_url=url, key_prefix=f"t{secrets.token_hex(4)}")
    return Settings(batch=FAST.model_copy(update=batch), queue=queue)


async def test_two_replicas_on_one_redis_work_off_one_batch_once(make_client, redis_server):
    settings = _on_redis(redis_server.url, max_in_flight=2)
    first, second = FakeEngine(delay_s=0.05), FakeEngine(delay_s=0.05)
    async with make_client(first, settings) as a, make_client(second, settings) as b:
        batch = await submit(a, jsonl(*(request_line(f"r{i}", f"q{i}") for i in range(20))))
        listed = (await b.get("/v1/batches")).json()["data"]
        assert [item["id"] for item in listed] == [batch["id"]]  # the other replica sees it
        done = await wait_for(b, batch["id"])
        lines = await result_lines(a, done["output_file_id"])
    assert sorted(line["custom_id"] for line in lines) == sorted(f"r{i}" for i in range(20))
    assert done["request_counts"] == {"total": 20, "completed": 20, "failed": 0}
    assert first.requests, "the first replica ran no line"
    assert second.requests, "the second replica ran no line"
    assert len(first.requests) + len(second.requests) == 20  # and none ran twice


async def test_a_batch_past_its_window_expires_with_the_rest_in_the_error_file(make_client, monkeypatch):
    monkeypatch.setitem(adapter.COMPLETION_WINDOWS, "24h", 1)  # a one-second window
    engine = FakeEngine(delay_s=0.3)
    async with make_client(engine, batch_settings(max_in_flight=1, file_retention_s=3600)) as client:
        # Six different questions: the same one would be answered from the result cache after the
        # first (0.9 s), so all six could end before a window that closes up to 1 s after creation.
        lines = (request_line(f"r{i}", f"q{i}") for i in range(6))
        uploaded = (await upload(client, jsonl(*lines))).json()
        assert uploaded["expires_at"] == uploaded["created_at"] + 3600
        created = await client.post(
            "/v1/batches",
            json={
                "input_file_id": uploaded["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
        )
        batch = created.json()
        assert batch["expires_at"] == batch["created_at"] + 1
        done = await wait_for(client, batch["id"], ("expired",))
        assert done["expired_at"] is not None
        answered = (
            [] if done["output_file_id"] is None else await result_lines(client, done["output_file_id"])
        )
        expired = await result_lines(client, done["error_file_id"])
        for _ in range(200):  # the line running at expiry ends (within 10 s); its answer is dropped
            if not engine.in_flight:
                break
            await asyncio.sleep(0.05)
        assert not engine.in_flight, "the line running at expiry never ended"
    counts = done["request_counts"]
    assert counts["total"] == 6
    assert counts["completed"] == len(answered) < 6
    assert counts["failed"] == len(expired) == 6 - len(answered)
    assert sorted(line["custom_id"] for line in answered + expired) == [f"r{i}" for i in range(6)]
    for line in expired:
        assert line["response"] is None
        assert line["error"]["code"] == "batch_expired"


async def test_a_queue_redis_that_is_down_answers_503_and_keeps_no_upload(make_client, tmp_path):
    settings = Settings(batch=FAST, queue=QueueSettings(redis_url="redis://127.0.0.1:1/0", timeout_s=0.5))
    async with make_client(FakeEngine(), settings) as client:
        response = await upload(client, jsonl(request_line("r0")))
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "not_ready"
        assert "Retry-After" in response.headers
        assert (await client.get("/v1/batches")).status_code == 503
        assert (
            await client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        ).status_code == 200
    assert list((tmp_path / "batches" / "files").iterdir()) == []


async def test_the_worker_deletes_files_past_their_retention(make_client):
    async with make_client(FakeEngine(), batch_settings(file_retention_s=1)) as client:
        uploaded = (await upload(client, jsonl(request_line("r0")))).json()
    await asyncio.sleep(2.1)  # created_at is in whole seconds: older than 1 s for certain
    async with make_client(FakeEngine(), batch_settings(file_retention_s=1)) as client:
        for _ in range(100):  # the worker's first pass sweeps
            if (await client.get(f"/v1/files/{uploaded['id']}")).status_code == 404:
                break
            await asyncio.sleep(0.02)
        assert (await client.get(f"/v1/files/{uploaded['id']}")).status_code == 404
        assert (await client.get("/v1/files")).json()["data"] == []
