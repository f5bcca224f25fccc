"""Print Glimpse's GPU benchmark next to the plain-generate() baseline, with ratios and the targets.

Usage: python bench/gpu_report.py baseline.jsonl bench_1024.json
(baseline.jsonl is the output of hf_baseline.py; bench_1024.json of `glimpse bench --json`.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from glimpse.client.bench_report import load_report

TARGETS = (
    "targets (H100, 1024², 128 tokens): saturated >= 12 req/s with p95 <= 8 s; "
    "alone <= 1.2 s e2e; TTFT <= 0.2 s"
)


def main(baseline_path: str, bench_path: str) -> None:
    rows = [json.loads(line) for line in Path(baseline_path).read_text().splitlines() if line.startswith("{")]
    baseline = {row["batch"]: row for row in rows if "batch" in row}
    best_static = max((row["req_per_s"] for row in baseline.values()), default=0.0)
    report = load_report(Path(bench_path))
    print(
        f"{'level':>6} {'req/s':>7} {'tok/s':>7} {'TTFT p50':>9} {'E2E p50':>8} {'E2E p95':>8} "
        f"{'E2E p99':>8} {'vs generate() same batch':>25} {'vs best static batch':>21}"
    )
    for level in report.levels:
        same = baseline.get(level.concurrency or -1)
        ratio_same = f"{level.request_throughput / same['req_per_s']:.2f}x" if same else "-"
        ratio_best = f"{level.request_throughput / best_static:.2f}x" if best_static else "-"
        ttft = level.ttft.p50 if level.ttft else float("nan")
        e2e = level.e2e
        print(
            f"{level.label:>6} {level.request_throughput:7.2f} {level.output_throughput:7.0f} {ttft:9.3f} "
            f"{e2e.p50 if e2e else float('nan'):8.2f} {e2e.p95 if e2e else float('nan'):8.2f} "
            f"{e2e.p99 if e2e else float('nan'):8.2f} {ratio_same:>25} {ratio_best:>21}"
        )
    print(TARGETS)


if __name__ == "__main__":
    main(*sys.argv[1:3])
