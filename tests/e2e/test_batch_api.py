"""OpenAI's Batch API over real HTTP with the official SDK, on ``glimpse serve --model tiny``.

Upload a JSONL file, create a batch, poll it to ``completed``, download the output: every
line answered once, matched by ``custom_id``. Then the embedded queue's durability: the
server killed with SIGKILL mid-batch and started again on the same directory finishes the
batch with each ``custom_id`` exactly once.
"""

from __future__ import annotations

import io
import json
import signal
import time
from pathlib import Path

import openai
from tests.e2e.harness import GlimpseServer
from tests.images import data_url

COLOURS = [(200, 40, 40), (20, 90, 250), (30, 180, 60), (240, 220, 30)]


def _client(server: GlimpseServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=60)


def _input(count: int, max_tokens: int) -> bytes:
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


def _submit(client: openai.OpenAI, content: bytes) -> str:
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


def _wait(client: openai.OpenAI, batch_id: str, limit_s: float = 240.0):
    deadline = time.monotonic() + limit_s
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "cancelled"):
            return batch
        assert time.monotonic() < deadline, batch
        time.sleep(0.3)


def _answers(client: openai.OpenAI, file_id: str) -> list[dict]:
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        "GLIMPSE_OBS__LOG_LEVEL": "INFO",
        "GLIMPSE_GUARD__AUDIT_LOG_PATH": str(tmp_path / "audit.sqlite3"),
        "GLIMPSE_BATCH__DIR": str(tmp_path / "batches"),
        "GLIMPSE_BATCH__VISIBILITY_TIMEOUT_S": "3",
        "GLIMPSE_BATCH__POLL_INTERVAL_S": "0.1",
    }


def test_the_openai_sdk_runs_a_batch_end_to_end(tmp_path):
    with GlimpseServer(["--model", "tiny"], env=_env(tmp_path), log_path=tmp_path / "server.log") as server:
        client = _client(server)
        batch_id = _submit(client, _input(8, max_tokens=8))
        batch = _wait(client, batch_id)
        assert batch.status == "completed", server.log()
        assert batch.request_counts.total == batch.request_counts.completed == 8
        assert batch.error_file_id is None
        answers = _answers(client, batch.output_file_id)
        assert [listed.id for listed in client.batches.list(limit=5).data] == [batch_id]
    assert sorted(a["custom_id"] for a in answers) == sorted(f"task-{i}" for i in range(8))
    for answer in answers:
        body = answer["response"]["body"]
        assert answer["response"]["status_code"] == 200
        assert body["choices"][0]["message"]["content"]
        assert body["usage"]["completion_tokens"] >= 1
    assert "Traceback" not in (tmp_path / "server.log").read_text(errors="replace")


def test_a_batch_survives_sigkill_and_a_restart_with_each_line_answered_once(tmp_path):
    env, log = _env(tmp_path), tmp_path / "server.log"
    with GlimpseServer(["--model", "tiny"], env=env, log_path=log) as first:
        client = _client(first)
        batch_id = _submit(client, _input(24, max_tokens=24))
        deadline = time.monotonic() + 120
        while client.batches.retrieve(batch_id).request_counts.completed < 3:
            assert time.monotonic() < deadline, first.log()
            time.sleep(0.1)
        first.stop(sig=signal.SIGKILL)  # lines in flight die with it, claimed and unanswered
    with GlimpseServer(["--model", "tiny"], env=env, log_path=log) as second:
        client = _client(second)
        batch = _wait(client, batch_id)
        assert batch.status == "completed", second.log()
        answers = _answers(client, batch.output_file_id)
    custom_ids = [a["custom_id"] for a in answers]
    assert sorted(custom_ids) == sorted(f"task-{i}" for i in range(24))  # each exactly once
    assert batch.request_counts.completed == 24
