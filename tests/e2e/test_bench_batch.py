"""``glimpse bench`` and ``glimpse batch`` against a real server on the tiny model.

The client's own counts are checked against what the server says it served
(Prometheus ``/metrics``), and an interrupted batch is resumed with no image done
twice or skipped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from tests.e2e.harness import metric_value

from glimpse.client.bench_inputs import synthetic_image

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

GLIMPSE = [str(Path(sys.executable).with_name("glimpse"))]
CHAT_ROUTE = "/v1/chat/completions"
INFER_ROUTE = "/infer"


def served(base_url: str, route: str) -> float:
    return metric_value(base_url, "glimpse_http_requests_total", route=route, status="200")


def settled(base_url: str, route: str, *, quiet_s: float = 1.0, limit_s: float = 30.0) -> float:
    """The counter once it stops moving: requests abandoned by a killed client still finish."""
    deadline = time.monotonic() + limit_s
    last = served(base_url, route)
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = served(base_url, route)
        idle = metric_value(base_url, "glimpse_http_requests_in_flight") <= 1  # this scrape itself
        if now == last and idle:
            return now
        last = now
    return last


def test_bench_counts_match_the_server_metrics(tiny_server, tmp_path):
    before = settled(tiny_server.base_url, CHAT_ROUTE)
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    cmd = [
        *GLIMPSE, "bench", "--url", tiny_server.base_url, "--concurrency", "1,4", "--num-requests", "8",
        "--max-tokens", "8", "--ignore-eos", "--image-size", "64", "--warmup", "1",
        "--slo-e2e", "60", "--json", str(out), "--plot", str(png),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)  # noqa: S603
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    levels = {level["label"]: level for level in report["levels"]}
    assert set(levels) == {"c=1", "c=4"}
    for level in levels.values():
        assert (level["completed"], level["failed"], level["errors"]) == (8, 0, {})
        assert level["total_output_tokens"] == 8 * 8  # --ignore-eos: exactly max_tokens each
        assert level["ttft"]["count"] == 8
        assert 0 < level["ttft"]["p50"] <= level["e2e"]["p50"]
        assert level["goodput"] == pytest.approx(level["request_throughput"])  # 60 s SLO: all meet it
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "c=4" in proc.stdout

    after = settled(tiny_server.base_url, CHAT_ROUTE)
    assert after - before == 1 + 8 + 8  # warm-up + both levels, nothing more, nothing lost
    assert all(level["cache_hits"] == 0 for level in levels.values())  # no-cache by default


def test_bench_cache_hits_match_the_server_metrics(tiny_server, tmp_path):
    base = tiny_server.base_url
    hits_before = metric_value(base, "glimpse_cache_requests_total", result="hit")
    out = tmp_path / "cached.json"
    cmd = [
        *GLIMPSE, "bench", "--url", base, "--concurrency", "1,4", "--num-requests", "8", "--max-tokens", "8",
        "--image-size", "72", "--warmup", "0", "--allow-cache", "--same-image", "--json", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)  # noqa: S603
    assert proc.returncode == 0, proc.stdout + proc.stderr
    hits = sum(level["cache_hits"] for level in json.loads(out.read_text())["levels"])
    assert hits >= 8 + 8 - 1  # one image, one question: only the very first can miss
    assert metric_value(base, "glimpse_cache_requests_total", result="hit") - hits_before == hits


def _batch(base_url: str, folder: Path, out: Path) -> list[str]:
    return [
        *GLIMPSE, "batch", str(folder), "--question", "What is in the picture?", "--out", str(out),
        "--url", base_url, "--concurrency", "2", "--max-tokens", "256",
    ]  # fmt: skip


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupted_batch_resumes_without_repeating_or_skipping(tiny_server, tmp_path, stop_signal):
    folder = tmp_path / "images"
    folder.mkdir()
    count = 60
    for i in range(count):
        (folder / f"img{i:03d}.png").write_bytes(synthetic_image(40 + i % 7, seed=i, fmt="png"))
    out = tmp_path / "results.jsonl"
    base = tiny_server.base_url
    start = settled(base, INFER_ROUTE)

    proc = subprocess.Popen(  # noqa: S603
        _batch(base, folder, out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 240
    while _lines(out) < 5:
        assert proc.poll() is None, f"batch exited early: {proc.communicate()[0]}"
        assert time.monotonic() < deadline, "no results after 240 s"
        time.sleep(0.05)
    os.kill(proc.pid, stop_signal)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + stop_signal, output
    assert "interrupted" in output
    first = _lines(out)
    assert 5 <= first < count, "the run must be interrupted midway for this test to mean anything"

    middle = settled(base, INFER_ROUTE)
    assert first <= middle - start <= first + 2  # at most the 2 in flight were served and dropped

    resumed = subprocess.run(  # noqa: S603
        _batch(base, folder, out), capture_output=True, text=True, timeout=400, check=False
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"skipped {first}" in resumed.stdout
    assert settled(base, INFER_ROUTE) - middle == count - first  # only what was missing

    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["status"] == 200 and r["response"] is not None for r in records)
    done = Counter(r["image"] for r in records)
    assert done == Counter({str(path.resolve()): 1 for path in folder.iterdir()})
