"""Slow clients against a real server: a stalled or trickling request must not hold a connection for ever.

A client that sends its headers, or part of its body, and then stops costs the
server a connection and (once the body is being read) a request slot. Other
clients must still be served meanwhile, and the stalled request must be cut off
within the server's request timeout: answered 408, or the connection closed.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.e2e.harness import GlimpseServer
from tests.images import png_b64

REQUEST_TIMEOUT_S = 3.0
# Generous: the server must act within its timeout; this only bounds how long we wait to see it.
GRACE_S = 10.0
PARTIAL_BODY = b'{"image": "' + base64.b64encode(b"\x89PNG\r\n\x1a\n")


@pytest.fixture(scope="module")
def short_timeout_server(
    tiny_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GlimpseServer]:
    env = {
        **tiny_env,
        "GLIMPSE_SERVER__BODY_TIMEOUT_S": str(REQUEST_TIMEOUT_S),
        "GLIMPSE_SERVER__HEADER_TIMEOUT_S": str(REQUEST_TIMEOUT_S),
    }
    log = tmp_path_factory.mktemp("logs") / "slow_clients.log"
    with GlimpseServer(["--model", "tiny"], env=env, log_path=log) as server:
        yield server


def _head(content_length: int | None = 100_000) -> bytes:
    lines = ["POST /infer HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _connect(server: GlimpseServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=5)


def _assert_others_are_served(server: GlimpseServer) -> None:
    health = httpx.get(f"{server.base_url}/healthz", timeout=5)
    assert health.status_code == 200
    answer = httpx.post(
        f"{server.base_url}/infer",
        json={"image": png_b64(), "text": "What colour?", "max_new_tokens": 2},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    assert isinstance(answer.json()["response"], str)


def _wait_for_cut_off(sock: socket.socket, started: float) -> None:
    """The server must answer 408 or close the connection before the grace period ends."""
    deadline = started + REQUEST_TIMEOUT_S + GRACE_S
    received = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            break
        except ConnectionResetError:
            return  # dropped: acceptable
        if not chunk:
            assert received == b"" or received.startswith(b"HTTP/1.1 408"), received[:300]
            return
        received += chunk
        if b"\r\n\r\n" in received:
            status_line = received.split(b"\r\n", 1)[0]
            assert status_line.startswith(b"HTTP/1.1 408"), received[:500]
            body = received.split(b"\r\n\r\n", 1)[1]
            if body.startswith(b"{"):
                assert json.loads(body)["error"]["code"] == "request_timeout", body
            return
    waited = time.monotonic() - started
    pytest.fail(
        f"the server still held the stalled request after {waited:.0f} s "
        f"(request timeout {REQUEST_TIMEOUT_S:g} s); received {received[:200]!r}"
    )


def test_a_stalled_body_does_not_block_others_and_is_cut_off(short_timeout_server: GlimpseServer) -> None:
    with _connect(short_timeout_server) as sock:
        sock.sendall(_head() + PARTIAL_BODY)
        started = time.monotonic()
        _assert_others_are_served(short_timeout_server)
        _wait_for_cut_off(sock, started)


def test_a_trickling_body_is_cut_off_by_a_total_deadline(short_timeout_server: GlimpseServer) -> None:
    """One byte every half second defeats any per-read timeout; only a whole-body deadline stops it."""
    stop = threading.Event()
    with _connect(short_timeout_server) as sock:
        sock.sendall(_head() + b'{"image": "')

        def trickle() -> None:
            while not stop.wait(0.5):
                try:
                    sock.sendall(b"A")
                except OSError:
                    return

        sender = threading.Thread(target=trickle, daemon=True)
        started = time.monotonic()
        sender.start()
        try:
            _assert_others_are_served(short_timeout_server)
            _wait_for_cut_off(sock, started)
        finally:
            stop.set()
            sender.join(5)


def test_stalled_headers_do_not_block_others_and_are_cut_off(short_timeout_server: GlimpseServer) -> None:
    with _connect(short_timeout_server) as sock:
        sock.sendall(b"POST /infer HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        started = time.monotonic()
        _assert_others_are_served(short_timeout_server)
        _wait_for_cut_off(sock, started)


def test_server_log_has_no_traceback_from_slow_clients(short_timeout_server: GlimpseServer) -> None:
    # Runs last in this module (pytest keeps file order): the cut-offs above must be quiet, ordinary events.
    log = Path(short_timeout_server.log_path).read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
