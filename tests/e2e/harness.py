"""Start real ``glimpse serve`` processes on loopback ports for end-to-end tests.

Like vLLM's ``RemoteOpenAIServer``: a free port, poll ``/readyz`` with a
deadline, fail fast (with the log) if the process dies, and kill the whole
process group on teardown.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["GlimpseServer", "free_port", "metric_value"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def metric_value(base_url: str, name: str, **labels: str) -> float:
    """A counter's or gauge's value now, summed over the samples matching ``labels``."""
    text = httpx.get(f"{base_url}/metrics", timeout=10).raise_for_status().text
    for family in text_string_to_metric_families(text):
        if family.name == name.removesuffix("_total"):  # the parser drops a counter's suffix
            return sum(
                s.value
                for s in family.samples
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
            )
    raise AssertionError(f"{name} is missing from /metrics")


class GlimpseServer:
    def __init__(
        self,
        args: list[str],
        *,
        env: dict[str, str] | None = None,
        log_path: Path,
        port: int | None = None,
        ready_timeout: float = 180.0,
    ) -> None:
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.args = args
        self.env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        self.log_path = log_path
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> GlimpseServer:
        cmd = [
            sys.executable,
            "-m",
            "glimpse",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *self.args,
        ]
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(  # noqa: S603 - our own CLI with fixed arguments
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        return self

    def wait_ready(self) -> GlimpseServer:
        assert self.proc is not None
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"glimpse serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"glimpse serve not ready after {self.ready_timeout}s:\n{self.log()}")

    def metric(self, name: str, **labels: str) -> float:
        return metric_value(self.base_url, name, **labels)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0, sig: int | None = None) -> int | None:
        """Signal the process group (SIGTERM: a graceful drain) and wait; SIGKILL after ``timeout``."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with_group = os.getpgid(self.proc.pid)
            os.killpg(with_group, signal.SIGTERM if sig is None else sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(with_group, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> GlimpseServer:
        return self.start().wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()
