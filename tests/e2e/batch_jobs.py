"""A Batch API job through the official ``openai`` SDK: input lines, submit, wait, read the answers."""

from __future__ import annotations

import io
import json
import time

import openai
from tests.e2e.harness import GlimpseServer
from tests.images import data_url

COLOURS = [(200, 40, 40), (20, 90, 250), (30, 180, 60), (240, 220, 30)]


def sdk_client(server: GlimpseServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=60)


def batch_input(count: int, max_tokens: int) -> bytes:
    lines = []
    for i in range(count):
        content = [
            {"type": "image_url", "image_url": {"url": data_url((64 + i, 48), COLOURS[i % len(COLOURS)])}},
            {"type": "text", "text": f"What colour is the shape? ({i})"},
        ]
        body = {"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}
        lines.append(
            json.dumps(
                {"custom_id": f"task-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
            )
        )
    return ("\n".join(lines) + "\n").encode()


def submit_batch(client: openai.OpenAI, content: bytes) -> str:
    uploaded = client.files.create(file=("requests.jsonl", io.BytesIO(content)), purpose="batch")
    assert uploaded.purpose == "batch"
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"run": "e2e"},
    )
    assert batch.status == "in_progress"
    return batch.id


def wait_batch(client: openai.OpenAI, batch_id: str, limit_s: float = 240.0):
    deadline = time.monotonic() + limit_s
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "cancelled"):
            return batch
        assert time.monotonic() < deadline, batch
        time.sleep(0.3)


def result_answers(client: openai.OpenAI, file_id: str) -> list[dict]:
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]
