"""bench/gpu_check.sh rehearsed on the CPU: every step of the one-call GPU check runs.

A GPU is lent rarely and for one call; a typo in a late step of the script would waste it.
The rehearsal (DRY_RUN=cpu) runs the same steps with the tiny model and the baseline's tiny config.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tests.e2e.harness import free_port

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
BASELINE = REPO.parent / "shared" / "bench" / "hf_baseline.py"


@pytest.mark.skipif(
    not BASELINE.exists() and not (REPO / "bench" / "hf_baseline.py").exists(),
    reason="hf_baseline.py is neither in bench/ nor in ../shared/bench/",
)
def test_gpu_check_runs_every_step_on_the_cpu(tmp_path):
    out = tmp_path / "out"
    env = {
        **os.environ,
        "DRY_RUN": "cpu",
        "OUT": str(out),
        "PY": sys.executable,
        "MODEL_DIR_DRY": str(tmp_path / "tiny"),
        "PORT_DRY": str(free_port()),
    }
    done = subprocess.run(
        ["bash", "bench/gpu_check.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = (out / "summary.txt").read_text()
    assert "greedy batched == generate(): 8/8 identical" in summary, summary
    assert "ready_s=" in summary
    baseline_rows = [line for line in (out / "baseline.jsonl").read_text().splitlines() if '"batch"' in line]
    assert len(baseline_rows) == 2
    assert "follow-up" in summary.split("== 5b.", 1)[1], summary  # the caches' step ran and printed
    for name in ("bench_1024.json", "bench_448.json", "follow_up.json"):
        assert (out / name).stat().st_size > 0
    ratios = summary.split("== 6. ratios", 1)[1].split("== 7.", 1)[0]
    for expected in ("c=1", "c=4", "targets"):
        assert expected in ratios, ratios
    # the quantization step: the tiny model served with int8 weights, its row measured
    quantized = summary.split("== 7. quantized weights side by side: int8", 1)[1]
    mib, number = r"[\d.,]+ MiB", r"[\d.]+"
    row = rf"\| int8 \| {mib} \(server RSS\) \| {mib} \| {mib} \| {number} \| {number} s \| {number} s"
    assert re.search(row, quantized), quantized
    assert "quantization int8" in quantized  # the server's own start-up line
