"""OpenAI's Batch API over real HTTP with the official SDK, on ``glimpse serve --model tiny``.

Upload a JSONL file, create a batch, poll it to ``completed``, download the output: every
line answered once, matched by ``custom_id``. Then the embedded queue's durability: the
server killed with SIGKILL mid-batch and started again on the same directory finishes the
batch with each ``custom_id`` exactly once.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from tests.e2e.batch_jobs import batch_input, result_answers, sdk_client, submit_batch, wait_batch
from tests.e2e.harness import GlimpseServer


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
        client = sdk_client(server)
        batch_id = submit_batch(client, batch_input(8, max_tokens=8))
        batch = wait_batch(client, batch_id)
        assert batch.status == "completed", server.log()
        assert batch.request_counts.total == batch.request_counts.completed == 8
        assert batch.error_file_id is None
        answers = result_answers(client, batch.output_file_id)
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
        client = sdk_client(first)
        batch_id = submit_batch(client, batch_input(24, max_tokens=24))
        deadline = time.monotonic() + 120
        while client.batches.retrieve(batch_id).request_counts.completed < 3:
            assert time.monotonic() < deadline, first.log()
            time.sleep(0.1)
        first.stop(sig=signal.SIGKILL)  # lines in flight die with it, claimed and unanswered
    with GlimpseServer(["--model", "tiny"], env=env, log_path=log) as second:
        client = sdk_client(second)
        batch = wait_batch(client, batch_id)
        assert batch.status == "completed", second.log()
        answers = result_answers(client, batch.output_file_id)
    custom_ids = [a["custom_id"] for a in answers]
    assert sorted(custom_ids) == sorted(f"task-{i}" for i in range(24))  # each exactly once
    assert batch.request_counts.completed == 24
