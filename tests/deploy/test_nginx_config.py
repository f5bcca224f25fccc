"""deploy/nginx: `nginx -t` accepts the shipped configuration, and it says what it must."""

from __future__ import annotations

import re

import pytest
from tests.deploy.deploy_files import DEPLOY
from tests.deploy.nginx_harness import CONF, NGINX, check, render

from glimpse.api.admission import TEXT_ALLOWANCE_BYTES
from glimpse.config import BatchSettings, ServerSettings

needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx)")


def _directives(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


@needs_nginx
def test_nginx_accepts_the_config_with_the_compose_upstream_lines(tmp_path):
    # The compose host names only resolve inside compose, so keep their parameters, not their hosts.
    lines = _directives((DEPLOY / "nginx" / "upstreams.compose.conf").read_text())
    local = [re.sub(r"^server [\w.-]+:", "server 127.0.0.1:", line) for line in lines]
    result = check(render(tmp_path, local))
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


@needs_nginx
def test_nginx_rejects_a_broken_config(tmp_path):
    """The check above can fail: an unknown directive makes `nginx -t` fail."""
    broken = CONF.read_text().replace("least_conn;", "least_conn;\n    no_such_directive on;")
    result = check(render(tmp_path, ["server 127.0.0.1:9;"], conf_text=broken))
    assert result.returncode != 0
    assert "no_such_directive" in result.stderr


def test_body_limits_match_glimpse_defaults():
    """The server-wide limit is Glimpse's body limit; Batch API uploads get the batch file limit."""
    text = CONF.read_text()
    (server_wide,) = re.findall(r"^    client_max_body_size (\d+)m;", text, re.MULTILINE)
    assert int(server_wide) * 1024 * 1024 == ServerSettings().max_body_bytes
    (files,) = re.findall(r"location = /v1/files \{[^}]*client_max_body_size (\d+)m;", text)
    assert int(files) * 1024 * 1024 == BatchSettings().max_file_bytes + TEXT_ALLOWANCE_BYTES


def test_read_timeout_outlasts_glimpse_request_timeout():
    """nginx must not cut a generation that Glimpse would still finish (or answer 504 for)."""
    (timeout,) = re.findall(r"proxy_read_timeout (\d+)s;", CONF.read_text())
    assert int(timeout) > ServerSettings().request_timeout_s


def test_streaming_and_forwarding_directives():
    directives = set(_directives(CONF.read_text()))
    for needed in (
        "least_conn;",
        "proxy_buffering off;",
        "proxy_http_version 1.1;",
        "proxy_set_header X-Request-ID $glimpse_request_id;",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "proxy_next_upstream error http_503 non_idempotent;",
        "return 301 https://$host$request_uri;",
    ):
        assert needed in directives, needed
    # No retry after a timeout: a long generation must not be run twice.
    (retry,) = [d for d in directives if d.startswith("proxy_next_upstream ")]
    assert "timeout" not in retry.split()
