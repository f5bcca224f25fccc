"""Driving the Batch API over an in-process client: upload, create, wait, read the results."""

from __future__ import annotations

import asyncio
import json
import time

from glimpse.config import BatchSettings, Settings

URL = "/v1/chat/completions"
FAST = BatchSettings(poll_interval_s=0.02)


def request_line(custom_id: str, text: str = "hi", **body) -> str:
    request = {"messages": [{"role": "user", "content": text}], "max_tokens": 8, **body}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": URL, "body": request})


def jsonl(*lines: str) -> bytes:
    return ("\n".join(lines) + "\n").encode()


async def upload(client, content: bytes, headers=None, purpose: str = "batch"):
    return await client.post(
        "/v1/files",
        files={"file": ("in.jsonl", content, "application/jsonl")},
        data={"purpose": purpose},
        headers=headers or {},
    )


async def create(client, file_id: str, headers=None, **overrides):
    body = {"input_file_id": file_id, "endpoint": URL, "completion_window": "24h", **overrides}
    return await client.post("/v1/batches", json=body, headers=headers or {})


async def submit(client, content: bytes, headers=None) -> dict:
    uploaded = await upload(client, content, headers)
    assert uploaded.status_code == 200, uploaded.text
    created = await create(client, uploaded.json()["id"], headers, metadata={"job": "t"})
    assert created.status_code == 200, created.text
    return created.json()


async def wait_for(
    client, batch_id: str, statuses=("completed",), headers=None, limit_s: float = 10.0
) -> dict:
    deadline = time.monotonic() + limit_s
    while True:
        batch = (await client.get(f"/v1/batches/{batch_id}", headers=headers or {})).json()
        if batch["status"] in statuses:
            return batch
        assert time.monotonic() < deadline, batch
        await asyncio.sleep(0.02)


async def result_lines(client, file_id: str | None, headers=None) -> list[dict]:
    assert file_id is not None
    response = await client.get(f"/v1/files/{file_id}/content", headers=headers or {})
    assert response.status_code == 200
    return [json.loads(line) for line in response.text.splitlines()]


def batch_settings(**batch) -> Settings:
    return Settings(batch=FAST.model_copy(update=batch))
