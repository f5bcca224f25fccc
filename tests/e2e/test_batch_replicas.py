"""Two ``glimpse serve --model tiny`` replicas on one Redis and one shared batch directory.

A batch of 200 lines submitted to one replica is worked off by both (the Redis Stream's
consumer group); that replica is killed with SIGKILL mid-run, with lines in flight, and
started again; the lines it held are reclaimed after the visibility timeout, and the
batch completes with each ``custom_id`` exactly once.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

from tests.e2e.batch_jobs import batch_input, result_answers, sdk_client, submit_batch, wait_batch
from tests.e2e.harness import GlimpseServer
from tests.redis_server import running_redis

LINES = 200


def _env(tmp_path: Path, redis_url: str, name: str) -> dict[str, str]:
    return {
        "GLIMPSE_OBS__LOG_LEVEL": "INFO",
        "GLIMPSE_GUARD__AUDIT_LOG_PATH": str(tmp_path / f"audit-{name}.sqlite3"),
        "GLIMPSE_QUEUE__REDIS_URL": redis_url,
        "GLIMPSE_BATCH__DIR": str(tmp_path / "shared"),  # the volume both replicas mount
        "GLIMPSE_BATCH__VISIBILITY_TIMEOUT_S": "3",
        "GLIMPSE_BATCH__POLL_INTERVAL_S": "0.1",
    }


def _replica(tmp_path: Path, redis_url: str, name: str) -> GlimpseServer:
    env = _env(tmp_path, redis_url, name)
    return GlimpseServer(["--model", "tiny"], env=env, log_path=tmp_path / f"{name}.log")


def test_a_batch_survives_a_replica_killed_mid_run_with_each_line_answered_once(tmp_path):
    with running_redis(tmp_path) as redis:
        first, second = _replica(tmp_path, redis.url, "first"), _replica(tmp_path, redis.url, "second")
        restarted = None
        try:
            for server in (first, second):
                server.start()
            for server in (first, second):
                server.wait_ready()
            batch_id = submit_batch(sdk_client(first), batch_input(LINES, max_tokens=4))
            watcher = sdk_client(second)
            deadline = time.monotonic() + 300
            while watcher.batches.retrieve(batch_id).request_counts.completed < LINES // 5:
                assert time.monotonic() < deadline, second.log()
                time.sleep(0.2)
            assert first.metric("glimpse_batch_lines_total", result="completed") > 0, first.log()
            first.stop(sig=signal.SIGKILL)  # its claimed lines die with it, unanswered
            restarted = _replica(tmp_path, redis.url, "first").start().wait_ready()
            batch = wait_batch(watcher, batch_id, limit_s=900)
            assert batch.status == "completed", second.log()
            answered = result_answers(sdk_client(restarted), batch.output_file_id)
            assert second.metric("glimpse_batch_lines_total", result="completed") > 0
        finally:
            for server in (first, second, restarted):
                if server is not None:
                    server.stop()
    counts = Counter(answer["custom_id"] for answer in answered)
    assert sorted(counts) == sorted(f"task-{i}" for i in range(LINES))
    assert set(counts.values()) == {1}  # each exactly once
    assert batch.request_counts.completed == LINES
    assert batch.error_file_id is None
    for name in ("second", "first"):
        log = (tmp_path / f"{name}.log").read_text(errors="replace")
        assert "Traceback" not in log, log[log.index("Traceback") - 300 :][:4000]
