"""Schemathesis against a real server's own OpenAPI schema: no generated request may cause a 5xx.

Schemathesis reads ``/openapi.json`` and sends schema-derived requests, valid
and invalid (boundary values from the coverage phase, then random ones from the
fuzzing phase), to every operation. The only check is ``not_a_server_error``:
whatever a client sends, the answer is a 2xx or a 4xx, never a crash. The
server log is checked too, because an error raised after a streamed 200 has
begun never shows up as a status code.

The seed is fixed so a failure reproduces; its output has a curl command per
failing case. Runtime is bounded by examples per operation, not by a clock.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.e2e.harness import GlimpseServer

MAX_EXAMPLES = 40
SEED = 20_260_101


def _log_size(server: GlimpseServer) -> int:
    return server.log_path.stat().st_size if server.log_path.exists() else 0


def test_no_generated_request_causes_a_server_error(tiny_server: GlimpseServer, tmp_path: Path) -> None:
    log_offset = _log_size(tiny_server)
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{tiny_server.base_url}/openapi.json",
        "--checks",
        "not_a_server_error",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--workers",
        "2",
        "--request-timeout",
        "120",
        "--generation-database",
        "none",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
        "--no-color",
        "--output-sanitize",
        "false",
    ]
    run = subprocess.run(  # noqa: S603 - our own interpreter running an installed tool
        command, capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-12_000:]
    generated = re.search(r"(\d+) generated", output)
    assert generated is not None, output[-3000:]
    assert int(generated.group(1)) >= MAX_EXAMPLES, output[-3000:]  # it really tested something
    selected = re.search(r"Operations:\s+(\d+) selected / (\d+) total", output)
    assert selected is not None, output[-3000:]
    assert int(selected.group(2)) >= 6, selected.group(0)  # every route: chat, models, infer, analyze, ...
    assert selected.group(1) == selected.group(2), selected.group(0)  # none left out
    with tiny_server.log_path.open("rb") as log:
        log.seek(log_offset)
        new_log = log.read().decode(errors="replace")
    assert "Traceback" not in new_log, new_log[-6000:]
    assert "unhandled error" not in new_log, new_log[-6000:]
