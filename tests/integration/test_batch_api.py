"""The Batch API in-process: files, batches, the worker on the fake engine, bad input, ownership."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import httpx
import pytest
from asgi_lifespan import LifespanManager
from tests.fakes import FakeEngine
from tests.integration.batch_client import (
    batch_settings,
    create,
    jsonl,
    request_line,
    result_lines,
    submit,
    upload,
    wait_for,
)

from glimpse.api.app import create_app
from glimpse.config import EngineSettings, GuardSettings
from glimpse.engine.protocol import EngineHealth
from glimpse.guard import hash_key


async def test_a_batch_runs_every_line_through_the_chat_pipeline_once(make_client):
    engine = FakeEngine()
    async with make_client(engine, batch_settings()) as client:
        batch = await submit(client, jsonl(*(request_line(f"r{i}", f"q{i}") for i in range(5))))
        assert batch["object"] == "batch"
        assert batch["status"] == "in_progress"
        assert batch["request_counts"] == {"total": 5, "completed": 0, "failed": 0}
        done = await wait_for(client, batch["id"])
        assert done["request_counts"] == {"total": 5, "completed": 5, "failed": 0}
        assert done["error_file_id"] is None
        assert done["metadata"] == {"job": "t"}
        assert done["completed_at"] >= done["in_progress_at"] >= done["created_at"]
        lines = await result_lines(client, done["output_file_id"])
        assert sorted(line["custom_id"] for line in lines) == [f"r{i}" for i in range(5)]
        for line in lines:
            response = line["response"]
            assert line["error"] is None
            assert response["status_code"] == 200
            assert line["id"] == response["request_id"]
            assert response["body"]["object"] == "chat.completion"
            assert response["body"]["choices"][0]["message"]["content"] == "hello world"
        output = (await client.get(f"/v1/files/{done['output_file_id']}")).json()
        assert output["purpose"] == "batch_output"
        assert output["object"] == "file"
        metrics = (await client.get("/metrics")).text
    assert sorted(r.messages[0].text for r in engine.requests) == [f"q{i}" for i in range(5)]
    assert 'glimpse_batch_lines_total{result="completed"} 5.0' in metrics


async def test_bad_lines_are_answered_in_the_error_file_while_the_rest_run(make_client):
    async with make_client(FakeEngine(), batch_settings()) as client:
        content = jsonl(
            request_line("good"),
            "not json at all",
            request_line("good"),
            json.dumps({"custom_id": "url", "method": "POST", "url": "/v1/embeddings", "body": {}}),
            request_line("model", model="no-such-model"),
            request_line("invalid", temperature=9),
            request_line("image", text="x").replace(
                '"content": "x"',
                '"content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]',
            ),
        )
        batch = await submit(client, content)
        assert batch["request_counts"] == {"total": 7, "completed": 0, "failed": 5}
        done = await wait_for(client, batch["id"])
        assert done["request_counts"] == {"total": 7, "completed": 1, "failed": 6}
        assert [line["custom_id"] for line in await result_lines(client, done["output_file_id"])] == ["good"]
        errors = {line["custom_id"]: line for line in await result_lines(client, done["error_file_id"])}
    assert errors[None]["error"]["code"] == "invalid_json"
    assert errors["good"]["error"]["code"] == "duplicate_custom_id"
    assert errors["url"]["error"]["code"] == "invalid_url"
    assert errors["model"]["error"]["code"] == "model_not_found"
    assert errors["invalid"]["error"]["code"] == "invalid_request"
    assert "temperature" in errors["invalid"]["error"]["message"]
    # Refused when it ran (image URLs are off by default): the status and body the live route answers.
    image = errors["image"]["response"]
    assert image["status_code"] == 400
    assert image["body"]["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("overrides", "param"),
    [({"endpoint": "/v1/embeddings"}, "endpoint"), ({"completion_window": "1h"}, "completion_window")],
)
async def test_a_wrong_endpoint_or_window_is_a_400(make_client, overrides, param):
    async with make_client(FakeEngine(), batch_settings()) as client:
        file_id = (await upload(client, jsonl(request_line("a")))).json()["id"]
        response = await create(client, file_id, **overrides)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is not jsonl\n", "No line of the input file is a usable request"),
        (b"\xff\xfe\x00", "not UTF-8"),
        (jsonl(request_line("a", model="gpt-4o"), request_line("b", model="gpt-4o")), "not served here"),
        (jsonl(request_line("a"), request_line("b"), request_line("c")), "at most 2"),
    ],
)
async def test_a_wholly_unusable_file_is_a_400(make_client, content, message):
    async with make_client(FakeEngine(), batch_settings(max_lines_per_batch=2)) as client:
        file_id = (await upload(client, content)).json()["id"]
        response = await create(client, file_id)
        listed = (await client.get("/v1/batches")).json()
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert message in response.json()["error"]["message"]
    assert listed["data"] == []


async def test_uploads_are_limited_in_size_and_purpose(make_client):
    async with make_client(FakeEngine(), batch_settings(max_file_bytes=1000)) as client:
        too_large = await upload(client, b"x" * 5000)
        wrong_purpose = await upload(client, jsonl(request_line("a")), purpose="fine-tune")
        missing = await create(client, "file-nope")
        listed = (await client.get("/v1/files")).json()
    assert too_large.status_code == 413
    assert too_large.json()["error"]["code"] == "request_too_large"
    assert wrong_purpose.status_code == 400
    assert wrong_purpose.json()["error"]["param"] == "purpose"
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found_error"
    assert listed == {"object": "list", "data": [], "has_more": False, "first_id": None, "last_id": None}


async def test_files_are_listed_paged_and_deleted(make_client):
    async with make_client(FakeEngine(), batch_settings()) as client:
        ids = [(await upload(client, jsonl(request_line(str(i))))).json()["id"] for i in range(3)]
        first = (await client.get("/v1/files", params={"limit": 2})).json()
        rest = (await client.get("/v1/files", params={"limit": 2, "after": first["last_id"]})).json()
        deleted = await client.delete(f"/v1/files/{ids[0]}")
        gone = await client.get(f"/v1/files/{ids[0]}")
    assert [f["id"] for f in first["data"]] == ids[::-1][:2]
    assert first["has_more"]
    assert [f["id"] for f in rest["data"]] == [ids[0]]
    assert not rest["has_more"]
    assert deleted.json() == {"id": ids[0], "object": "file", "deleted": True}
    assert gone.status_code == 404


async def test_another_key_sees_none_of_a_keys_files_and_batches(make_client, tmp_path):
    keys = tmp_path / "keys.json"
    keys.write_text(
        json.dumps(
            [
                {"name": "a", "sha256": hash_key("key-a"), "scopes": ["batch"]},
                {"name": "b", "sha256": hash_key("key-b")},
                {"name": "chat-only", "sha256": hash_key("key-c"), "scopes": ["chat"]},
            ]
        )
    )
    settings = batch_settings().model_copy(update={"guard": GuardSettings(api_keys_file=keys)})
    a, b, c = ({"Authorization": f"Bearer key-{x}"} for x in "abc")
    async with make_client(FakeEngine(), settings) as client:
        batch = await submit(client, jsonl(request_line("r")), a)
        done = await wait_for(client, batch["id"], headers=a)
        file_id = done["output_file_id"]
        statuses = [
            (await client.get(f"/v1/batches/{batch['id']}", headers=b)).status_code,
            (await client.post(f"/v1/batches/{batch['id']}/cancel", headers=b)).status_code,
            (await client.get(f"/v1/files/{file_id}", headers=b)).status_code,
            (await client.get(f"/v1/files/{file_id}/content", headers=b)).status_code,
            (await client.delete(f"/v1/files/{batch['input_file_id']}", headers=b)).status_code,
            (await create(client, batch["input_file_id"], b)).status_code,
        ]
        lists = [
            (await client.get("/v1/batches", headers=b)).json()["data"],
            (await client.get("/v1/files", headers=b)).json()["data"],
        ]
        own = (await client.get(f"/v1/files/{file_id}/content", headers=a)).status_code
        scoped = [
            (await client.get("/v1/batches", headers=c)).status_code,
            (await client.get(f"/v1/files/{file_id}", headers=c)).status_code,
            (await upload(client, b"{}", c)).status_code,
        ]
        anonymous = (await client.get("/v1/files")).status_code
    assert statuses == [404] * 6
    assert lists == [[], []]
    assert own == 200
    assert scoped == [403, 403, 403]
    assert anonymous == 401


@dataclass
class BoundedEngine(FakeEngine):
    """Reports a capacity, as the HF engine does, and records how many requests ran at once."""

    capacity: int = 4
    #: Live requests the engine is running besides the batch lines (steered by the test).
    live: int = 0
    #: Its running batch, when it reports one; the rest of ``capacity`` is its queue.
    slots: int | None = None

    def health(self) -> EngineHealth:
        busy = self.in_flight + self.live
        if self.slots is None:
            return EngineHealth(self.ready, "ready", running=busy, capacity=self.capacity)
        running = min(busy, self.slots)
        return EngineHealth(
            self.ready, "ready", busy - running, running, capacity=self.capacity, slots=self.slots
        )


async def test_batch_lines_take_only_their_share_of_the_engine(make_client):
    engine = BoundedEngine(delay_s=0.02, capacity=4)
    settings = batch_settings(max_in_flight=10, capacity_share=0.5).model_copy(
        update={"engine": EngineSettings(warmup=False)}
    )
    async with make_client(engine, settings) as client:
        runner_peak = 0
        batch = await submit(client, jsonl(*(request_line(f"r{i}", f"q{i}") for i in range(8))))
        deadline = time.monotonic() + 10
        while (await client.get(f"/v1/batches/{batch['id']}")).json()["status"] != "completed":
            runner_peak = max(runner_peak, engine.in_flight)
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)
    assert 1 <= runner_peak <= 2


async def _peak_lines(client, engine: BoundedEngine, lines: int) -> int:
    """Runs a batch of ``lines`` to the end; the most of its lines the engine held at once."""
    peak = 0
    batch = await submit(client, jsonl(*(request_line(f"r{i}", f"q{i}") for i in range(lines))))
    deadline = time.monotonic() + 10
    while (await client.get(f"/v1/batches/{batch['id']}")).json()["status"] != "completed":
        peak = max(peak, engine.in_flight)
        assert time.monotonic() < deadline
        await asyncio.sleep(0.005)
    return peak


async def test_the_share_is_of_the_running_batch_not_of_the_engine_queue_too(make_client):
    # 4 slots and 4 queue places: half of the 8 places would be every slot, and a live request
    # arriving then would wait in the queue for a batch line to end.
    engine = BoundedEngine(delay_s=0.02, capacity=8, slots=4)
    settings = batch_settings(max_in_flight=10, capacity_share=0.5).model_copy(
        update={"engine": EngineSettings(warmup=False)}
    )
    async with make_client(engine, settings) as client:
        peak = await _peak_lines(client, engine, 8)
    assert 1 <= peak <= 2


class LaggingEngine(BoundedEngine):
    """Takes a request into its count only a while after ``submit``, as a pushed engine state lags."""

    lag_s: float = 0.1

    async def submit(self, request):
        await asyncio.sleep(self.lag_s)
        async for event in super().submit(request):
            yield event


# Three slots busy with work the admission never saw. With the lagging engine the worker polls
# (every 20 ms) five times while each line is on its way to the engine, not yet in its count.
@pytest.mark.parametrize("engine_class", [BoundedEngine, LaggingEngine])
async def test_batch_lines_take_only_free_slots_never_a_place_in_the_engine_queue(make_client, engine_class):
    engine = engine_class(delay_s=0.02, capacity=8, slots=4, live=3)
    settings = batch_settings(max_in_flight=10, capacity_share=1.0).model_copy(
        update={"engine": EngineSettings(warmup=False)}
    )
    async with make_client(engine, settings) as client:
        peak = await _peak_lines(client, engine, 4)
        engine.live = 0  # the live requests end (the watchdog checks the engine is idle)
    assert peak == 1  # the one slot the live requests leave: none queued behind a batch line


async def test_batch_lines_wait_while_live_requests_fill_the_engine(make_client):
    engine = BoundedEngine(capacity=4, live=4)
    settings = batch_settings().model_copy(update={"engine": EngineSettings(warmup=False)})
    async with make_client(engine, settings) as client:
        batch = await submit(client, jsonl(request_line("r0", "q0"), request_line("r1", "q1")))
        await asyncio.sleep(0.3)  # fifteen polls of the worker
        assert engine.requests == []
        assert (await client.get(f"/v1/batches/{batch['id']}")).json()["status"] == "in_progress"
        engine.live = 3  # one place free: the lines run one at a time
        done = await wait_for(client, batch["id"])
        engine.live = 0  # the live requests end (the watchdog checks the engine is idle)
    assert done["request_counts"]["completed"] == 2


async def test_cancelling_stops_the_batch_and_keeps_what_was_answered(make_client):
    engine = FakeEngine(delay_s=0.05)
    async with make_client(engine, batch_settings(max_in_flight=1)) as client:
        batch = await submit(client, jsonl(*(request_line(f"r{i}", f"q{i}") for i in range(6))))
        while not engine.requests:  # noqa: ASYNC110 - the fake engine offers no event to wait on
            await asyncio.sleep(0.01)
        cancelling = (await client.post(f"/v1/batches/{batch['id']}/cancel")).json()
        assert cancelling["status"] == "cancelling"
        assert cancelling["cancelling_at"] is not None
        done = await wait_for(client, batch["id"], ("cancelled",))
    assert 1 <= done["request_counts"]["completed"] < 6
    assert len(engine.requests) == done["request_counts"]["completed"]


async def test_a_shutdown_puts_running_lines_back_and_a_restart_finishes_them(make_client, tmp_path):
    slow = FakeEngine(delay_s=0.5)
    settings = batch_settings(max_in_flight=2, dir=tmp_path / "batches")
    # Not make_client: its watchdog would wait for the running lines to end before shutting down.
    app = create_app(
        settings.model_copy(update={"guard": GuardSettings(audit_log_path=tmp_path / "a.db")}), slow
    )
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            batch = await submit(client, jsonl(*(request_line(f"r{i}", f"q{i}") for i in range(3))))
            while slow.in_flight < 2:  # noqa: ASYNC110 - the fake engine offers no event to wait on
                await asyncio.sleep(0.01)
    # Shut down with two lines running: they are cancelled and queued again, not lost or answered.
    assert slow.in_flight == 0
    assert len(slow.requests) == 2
    async with make_client(FakeEngine(), settings) as client:
        done = await wait_for(client, batch["id"])
        lines = await result_lines(client, done["output_file_id"])
    assert sorted(line["custom_id"] for line in lines) == ["r0", "r1", "r2"]
    assert done["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
