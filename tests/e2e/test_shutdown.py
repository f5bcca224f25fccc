"""SIGTERM in the middle of a burst: every admitted request completes, then exit 0."""

from __future__ import annotations

import base64
import contextlib
import signal
import threading
import time

import httpx
from tests.e2e.harness import GlimpseServer
from tests.images import png_bytes


def test_sigterm_finishes_every_admitted_request(tiny_env, tmp_path):
    server = (
        GlimpseServer(["--model", "tiny"], env=tiny_env, log_path=tmp_path / "server.log")
        .start()
        .wait_ready()
    )
    results: list[tuple[int, str]] = []
    lock = threading.Lock()

    def ask(i: int) -> None:
        png = png_bytes((64 + 8 * i, 64), (i * 20, 100, 50))
        url = "data:image/png;base64," + base64.b64encode(png).decode()
        content = [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": f"question {i}"},
        ]
        body = {"messages": [{"role": "user", "content": content}], "max_tokens": 1500, "ignore_eos": True}
        try:
            response = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=120)
            outcome = (response.status_code, response.text)
        except httpx.ConnectError as exc:  # refused before admission: never admitted
            outcome = (-1, str(exc))
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        # The whole burst is admitted (in flight counts this scrape too).
        while server.metric("glimpse_http_requests_in_flight") - 1 < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        server.signal(signal.SIGTERM)
        time.sleep(0.2)
        with contextlib.suppress(httpx.TransportError):  # draining: readiness turns 503 at once
            assert httpx.get(f"{server.base_url}/readyz", timeout=5).status_code == 503
        for thread in threads:
            thread.join(120)
        assert server.proc is not None
        assert server.proc.wait(60) == 0, server.log()
    finally:
        server.stop()
    statuses = [status for status, _ in results]
    assert len(results) == 8
    assert statuses.count(200) == 8, results
    assert all('"completion_tokens":1500' in text.replace(" ", "") for _, text in results)
    log = (tmp_path / "server.log").read_text()
    assert "Traceback" not in log, log[-3000:]
    assert log.index("Shutting down") < log.rindex('"status": 200'), "no request was still running at SIGTERM"
