"""``bench/rss_images.py --quick``: RSS comes back after a flood of large images (real server, tiny model)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

BENCH = Path(__file__).resolve().parents[2] / "bench" / "rss_images.py"


def test_rss_returns_after_a_hostile_images_run(tiny_env: dict[str, str]) -> None:
    env_args = [arg for name, value in tiny_env.items() for arg in ("--env", f"{name}={value}")]
    result = subprocess.run(  # noqa: S603 - our own script with fixed arguments
        [sys.executable, str(BENCH), "--quick", *env_args],
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "PASS" in output, output
    # The hostile mix was really served: refusals from the headers, and answers.
    assert re.search(r"4x20MP 413: [1-9]", output), output
    assert re.search(r"4x12MP 413: [1-9]", output), output
    assert re.search(r"1MP 200: [1-9]", output), output
