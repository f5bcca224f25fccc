"""Live requests keep their latency while a large batch runs (issue 20), on ``glimpse serve --model tiny``.

``bench/batch_live_latency.py`` measures it against the server: rounds of sequential
streamed chat requests on the idle server, then as many with a fresh batch running (each
with its own image, no cache); its goal is a with-batch p50 time to first token at most 1.5x
the idle p50, with the batch still in progress at the end of every window. This test holds
the ratio to 3x (see below) and the batch to half the slots.

The server runs 8 slots and lets batch lines hold up to 64 at once, so that
``capacity_share`` (0.5 of the slots: 4) is what bounds the batch, not ``max_in_flight``.
A share of the engine's slots *and* queue (24 places: 12 lines) filled every slot and put
live requests in the queue behind batch lines: 4x to 11x the idle TTFT.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tests.e2e.harness import GlimpseServer

pytestmark = pytest.mark.timeout(600)

REPO = Path(__file__).resolve().parents[2]
LIVE_RATIO_LIMIT = 3.0


def test_live_requests_keep_their_time_to_first_token_while_a_large_batch_runs(tmp_path):
    env = {
        "GLIMPSE_OBS__LOG_LEVEL": "INFO",
        "GLIMPSE_GUARD__AUDIT_LOG_PATH": str(tmp_path / "audit.sqlite3"),
        "GLIMPSE_BATCH__DIR": str(tmp_path / "batches"),
        "GLIMPSE_BATCH__MAX_IN_FLIGHT": "64",
        "GLIMPSE_BATCH__POLL_INTERVAL_S": "0.1",
    }
    args = ["--model", "tiny", "--max-batch-size", "8"]
    out = tmp_path / "latency.json"
    with GlimpseServer(args, env=env, log_path=tmp_path / "server.log") as server:
        done = subprocess.run(  # noqa: S603 - our own script
            [
                sys.executable,
                "bench/batch_live_latency.py",
                "--url",
                server.base_url,
                "--rounds",
                "5",
                "--samples",
                "8",
                "--json",
                str(out),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=400,
        )
        assert done.returncode in (0, 1), done.stdout[-3000:] + done.stderr[-3000:] + server.log()
        left_running = server.metric("glimpse_batch_lines_in_flight")
    summary = json.loads(out.read_text())
    report = done.stdout
    assert left_running == 0, report  # every cancelled batch's lines ended
    assert 1 <= max(summary["batch_lines_in_flight_at_window_ends"]) <= 4, report  # half of 8 slots
    assert len(summary["idle_ttft_s"]) == len(summary["batch_ttft_s"]) == 40
    assert summary["batch_ran_throughout"], report  # every window was under batch load
    assert summary["batch_lines_done_in_windows"] >= 5 * 8, report
    # The benchmark's goal is 1.5x, judged on a quiet machine (bench/batch_live_latency.py, README).
    # In CI other jobs share the two cores, and the ratio swung 1.3-1.9x from that alone; what this
    # test must catch is live requests queued behind batch lines (4x to 11x before the fix).
    assert summary["p50_ratio"] <= LIVE_RATIO_LIMIT, report
    assert ("PASSED" if summary["passed"] else "FAILED") in report  # the 1.5x goal, printed
    log = (tmp_path / "server.log").read_text(errors="replace")
    assert "Traceback" not in log, log[log.index("Traceback") - 300 :][:4000]
