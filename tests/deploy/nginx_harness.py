"""Run ``deploy/nginx/glimpse.conf`` under Debian's nginx, unprivileged ports, in a temp dir.

The shipped file is used as is, except for three things a test cannot have: ports 80/443
(replaced by free loopback ports), ``/var/log/nginx`` (replaced by the temp dir) and the
replica list (the test writes ``glimpse.d/upstreams.conf``, the file the config includes).
Every replacement must match, so a change to the shipped file that the harness does not
understand fails the tests instead of silently testing something else.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.harness import free_port

__all__ = ["NGINX", "NginxLayout", "NginxProcess", "check", "make_cert", "render"]

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "deploy" / "nginx" / "glimpse.conf"
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


@dataclass(slots=True, frozen=True)
class NginxLayout:
    root: Path
    http_port: int
    https_port: int

    @property
    def main_conf(self) -> Path:
        return self.root / "nginx.conf"

    @property
    def access_log(self) -> Path:
        return self.root / "logs" / "access.log"

    @property
    def error_log(self) -> Path:
        return self.root / "logs" / "error.log"


def make_cert(directory: Path) -> None:
    """A throwaway self-signed certificate, made the way docs/production.md says."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(directory / "glimpse.key"),
            "-out",
            str(directory / "glimpse.crt"),
        ],  # fmt: skip
        check=True,
        capture_output=True,
    )


def _replace(text: str, old: str, new: str) -> str:
    assert old in text, f"{CONF.name} no longer contains {old!r}; update tests/deploy/nginx_harness.py"
    return text.replace(old, new)


def render(root: Path, upstream_servers: list[str], conf_text: str | None = None) -> NginxLayout:
    """Write a runnable configuration under ``root``; ``upstream_servers`` are full ``server`` lines."""
    layout = NginxLayout(root, free_port(), free_port())
    for sub in ("conf.d", "glimpse.d", "logs", "temp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    make_cert(root / "certs")
    text = conf_text if conf_text is not None else CONF.read_text()
    text = _replace(text, "listen 80;", f"listen 127.0.0.1:{layout.http_port};")
    text = _replace(text, "listen 443 ssl;", f"listen 127.0.0.1:{layout.https_port} ssl;")
    text = _replace(text, "listen [::]:80;\n", "")
    text = _replace(text, "listen [::]:443 ssl;\n", "")
    text = _replace(text, "/var/log/nginx/", f"{root / 'logs'}/")
    (root / "conf.d" / "glimpse.conf").write_text(text)
    (root / "glimpse.d" / "upstreams.conf").write_text("".join(f"{s}\n" for s in upstream_servers))
    temp = root / "temp"
    user = "user root root;\n" if os.geteuid() == 0 else ""
    layout.main_conf.write_text(
        f"{user}daemon off;\nworker_processes 1;\npid {root}/nginx.pid;\n"
        f"error_log {layout.error_log} info;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        f"  client_body_temp_path {temp}/body;\n  proxy_temp_path {temp}/proxy;\n"
        f"  fastcgi_temp_path {temp}/fastcgi;\n  uwsgi_temp_path {temp}/uwsgi;\n"
        f"  scgi_temp_path {temp}/scgi;\n"
        "  include conf.d/glimpse.conf;\n"
        "}\n"
    )
    return layout


def _nginx_cmd(layout: NginxLayout, *extra: str) -> list[str]:
    assert NGINX is not None
    return [NGINX, "-c", str(layout.main_conf), "-p", f"{layout.root}/", "-e", str(layout.error_log), *extra]


def check(layout: NginxLayout) -> subprocess.CompletedProcess[str]:
    """``nginx -t`` on the rendered layout."""
    return subprocess.run(_nginx_cmd(layout, "-t"), capture_output=True, text=True, timeout=30)


class NginxProcess:
    """nginx in the foreground; stopped (gracefully, then killed) on exit."""

    def __init__(self, layout: NginxLayout) -> None:
        self.layout = layout
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.layout.https_port}"

    def __enter__(self) -> NginxProcess:
        self.proc = subprocess.Popen(
            _nginx_cmd(self.layout), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.proc.returncode}:\n{self.errors()}")
            try:
                socket.create_connection(("127.0.0.1", self.layout.https_port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"nginx did not listen:\n{self.errors()}")

    def errors(self) -> str:
        log = self.layout.error_log
        return log.read_text(errors="replace")[-4000:] if log.exists() else ""

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
