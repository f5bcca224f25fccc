"""deploy/nginx/glimpse.conf for real: nginx with TLS on loopback in front of two Glimpse processes."""

from __future__ import annotations

import http.client
import json
import os
import re
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from tests.deploy.nginx_harness import NGINX, NginxProcess, render
from tests.e2e.harness import GlimpseServer, free_port
from tests.images import data_url, png_b64

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx)"),
]

REPO = Path(__file__).resolve().parents[2]
SERVER_LINE = "server 127.0.0.1:{port} max_fails=3 fail_timeout=10s;"


@pytest.fixture(scope="module")
def replicas(tiny_env, tmp_path_factory) -> Iterator[list[GlimpseServer]]:
    """Two ``glimpse serve --model tiny`` processes, started together."""
    logs = tmp_path_factory.mktemp("replicas")
    with ExitStack() as stack:
        servers = []
        for i in range(2):
            server = GlimpseServer(["--model", "tiny"], env=tiny_env, log_path=logs / f"replica-{i}.log")
            server.start()
            stack.callback(server.stop)
            servers.append(server)
        for server in servers:
            server.wait_ready()
        yield servers


@pytest.fixture(scope="module")
def nginx(replicas, tmp_path_factory) -> Iterator[NginxProcess]:
    layout = render(tmp_path_factory.mktemp("nginx"), [SERVER_LINE.format(port=s.port) for s in replicas])
    with NginxProcess(layout) as proc:
        yield proc


def _client(base_url: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, verify=False, timeout=120)


def _chat_body(max_tokens: int, **extra) -> dict:
    content = [
        {"type": "image_url", "image_url": {"url": data_url()}},
        {"type": "text", "text": "这是什么？"},
    ]
    return {
        "model": "tiny",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        **extra,
    }


def _access_log(
    proc: NginxProcess, uris: tuple[str, ...], expected: int, timeout_s: float = 10.0
) -> list[dict]:
    """The access log's entries for ``uris``, once ``expected`` of them are there (or the time is up).

    nginx writes an entry in its log phase, after the response's last byte went out: a
    client can hold its whole answer a moment before the line exists.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        lines = proc.layout.access_log.read_text().splitlines(keepends=True)
        entries = [json.loads(line) for line in lines if line.endswith("\n")]
        wanted = [e for e in entries if e["uri"] in uris]
        if len(wanted) >= expected or time.monotonic() > deadline:
            return wanted
        time.sleep(0.05)


def _one_request(base_url: str, i: int) -> tuple[str, int, str, str]:
    """(kind, status, sent request id or '', echoed request id); alternates /infer and streaming chat."""
    sent = f"deploy-test-{i}" if i % 3 == 0 else ""
    headers = {"X-Request-ID": sent} if sent else {}
    with _client(base_url) as client:
        if i % 2 == 0:
            r = client.post(
                "/infer", json={"image": png_b64(), "text": f"q{i}", "max_new_tokens": 8}, headers=headers
            )
            assert isinstance(r.json()["response"], str)
            return "infer", r.status_code, sent, r.headers["x-request-id"]
        with client.stream(
            "POST", "/v1/chat/completions", json=_chat_body(8, stream=True), headers=headers
        ) as r:
            lines = [line for line in r.iter_lines() if line.startswith("data:")]
        assert lines[-1] == "data: [DONE]"
        return "chat", r.status_code, sent, r.headers["x-request-id"]


def _served(server: GlimpseServer) -> float:
    """Inference requests this replica has answered, by its own metrics."""
    return server.metric("glimpse_http_requests_total", route="/infer") + server.metric(
        "glimpse_http_requests_total", route="/v1/chat/completions"
    )


def test_requests_over_tls_are_spread_over_both_replicas(replicas, nginx):
    before = {s.port: _served(s) for s in replicas}
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: _one_request(nginx.https_url, i), range(20)))

    assert [status for _, status, _, _ in results] == [200] * 20
    for _, _, sent, echoed in results:
        if sent:
            assert echoed == sent  # the caller's id reaches the replica, which echoes it
        else:
            assert re.fullmatch(r"[0-9a-f]{32}", echoed)  # nginx's $request_id, passed on

    entries = _access_log(nginx, ("/infer", "/v1/chat/completions"), expected=20)
    assert len(entries) == 20
    assert {e["request_id"] for e in entries} == {echoed for _, _, _, echoed in results}
    per_replica = Counter(e["upstream_addr"] for e in entries)
    assert set(per_replica) == {f"127.0.0.1:{s.port}" for s in replicas}, per_replica
    assert min(per_replica.values()) >= 5, per_replica  # least_conn spreads, not just touches

    # Each replica's own count agrees with nginx's view of who served what.
    # A replica counts a request as its handler returns, which may come after nginx logged it.
    for server in replicas:
        expected = before[server.port] + per_replica[f"127.0.0.1:{server.port}"]
        deadline = time.monotonic() + 10
        while _served(server) < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _served(server) == expected


def _arrival_times(client: httpx.Client, body: dict) -> list[float]:
    start = time.monotonic()
    times = []
    with client.stream("POST", "/v1/chat/completions", json=body, headers={"Cache-Control": "no-cache"}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data:"):
                times.append(time.monotonic() - start)
    return times


def test_server_sent_events_pass_through_unbuffered(replicas, nginx):
    # Sampled (not cached), exactly 400 tokens: long enough to tell streaming from buffering.
    body = _chat_body(400, stream=True, ignore_eos=True, temperature=1.0)
    with _client(nginx.https_url) as client:
        times = _arrival_times(client, body)
    assert len(times) > 50
    # Passed through, events arrive one decode step apart; buffered by nginx, they arrive in a
    # handful of bursts, one per filled proxy buffer (measured: ~200 vs ~5 bursts of 280 events).
    bursts = 1 + sum(1 for a, b in zip(times, times[1:], strict=False) if b - a > 0.001)
    assert bursts > len(times) / 4, (bursts, len(times))
    assert times[-1] - times[0] > 0.2, times


def test_plain_http_redirects_to_https(nginx):
    r = httpx.get(f"http://127.0.0.1:{nginx.layout.http_port}/v1/models?x=1", timeout=10)
    assert r.status_code == 301
    assert r.headers["location"] == "https://127.0.0.1/v1/models?x=1"


def test_body_over_the_glimpse_limit_is_refused_at_the_edge(replicas, nginx):
    """Refused on the declared length alone: nginx answers before a byte of the body is sent."""
    conn = http.client.HTTPSConnection(
        "127.0.0.1", nginx.layout.https_port, context=ssl._create_unverified_context(), timeout=30
    )
    try:
        conn.putrequest("POST", "/infer")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(32 * 1024 * 1024 + 1))
        conn.endheaders()
        response = conn.getresponse()
        assert response.status == 413
        assert b"nginx" in response.read()  # nginx's own page: no replica saw the request
    finally:
        conn.close()


def test_metrics_are_not_published_at_the_edge(replicas, nginx):
    with _client(nginx.https_url) as client:
        assert client.get("/metrics").status_code == 404
    assert httpx.get(f"{replicas[0].base_url}/metrics", timeout=10).status_code == 200


class _Always503(BaseHTTPRequestHandler):
    """A replica that refuses every request at admission, as a draining or loading Glimpse does."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b'{"error": {"message": "draining", "type": "service_unavailable"}}'
        self.send_response(503)
        self.send_header("Retry-After", "1")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def refusing_replica() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Always503)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("failure", ["connection refused", "503 at admission"])
def test_post_is_retried_on_the_other_replica(replicas, refusing_replica, tmp_path, failure):
    """`proxy_next_upstream error http_503 non_idempotent`: a replica that did nothing costs nothing.

    nginx retries a refused connection whatever the method; retrying a POST that got a 503
    needs `non_idempotent` (without it, some of these requests would get the 503).
    """
    bad = free_port() if failure == "connection refused" else refusing_replica
    layout = render(tmp_path, [SERVER_LINE.format(port=bad), SERVER_LINE.format(port=replicas[0].port)])
    with NginxProcess(layout) as proc, _client(proc.https_url) as client:
        statuses = [
            client.post("/infer", json={"image": png_b64(), "text": f"r{i}", "max_new_tokens": 4}).status_code
            for i in range(6)
        ]
        entries = _access_log(proc, ("/infer",), expected=6)
    assert statuses == [200] * 6
    # Some requests went to the bad replica first and were then answered by the good one.
    assert any(e["upstream_addr"].startswith(f"127.0.0.1:{bad}, ") for e in entries), entries
    if failure == "503 at admission":
        assert any(e["upstream_status"] == "503, 200" for e in entries), entries


def _dockerfile_healthcheck(dockerfile: Path) -> list[str]:
    text = dockerfile.read_text().replace("\\\n", " ")
    match = re.search(r"^HEALTHCHECK .*?\bCMD (\[.*\])\s*$", text, re.MULTILINE)
    assert match, f"no exec-form HEALTHCHECK in {dockerfile}"
    return json.loads(match.group(1))


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cuda"])
def test_image_healthcheck_command_works(replicas, dockerfile):
    """The HEALTHCHECK of the images, run against a real replica and against a closed port."""
    cmd = _dockerfile_healthcheck(REPO / "deploy" / "docker" / dockerfile)
    assert cmd[0] in ("python", "python3")
    cmd = [sys.executable, *cmd[1:]]
    env = {**os.environ, "GLIMPSE_SERVER__PORT": str(replicas[0].port)}
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=20).returncode == 0
    env["GLIMPSE_SERVER__PORT"] = str(free_port())
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=20).returncode != 0
