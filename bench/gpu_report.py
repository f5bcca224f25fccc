"""Print Glimpse's GPU benchmark next to the plain-generate() baseline, with ratios and the targets.

Usage: python bench/gpu_report.py baseline.jsonl bench_1024.json
(baseline.jsonl is the output of hf_baseline.py; bench_1024.json of `glimpse bench --json`.)

For bench/gpu_check.sh's quantization step, two more forms:

    python bench/gpu_report.py footprint URL PID DEVICE > quant_int8.json
    python bench/gpu_report.py quantization OUT_DIR none,int8,fp8 [--saturated 32]

``footprint`` records, for the server running now, the memory it holds (on CUDA
the device's ``memory.used`` from nvidia-smi, the server being the only process on
it; on the CPU the server's resident set) and the weight and KV-cache bytes its
``/metrics`` reports. ``quantization`` prints one row per method from those files
and each method's ``glimpse bench --json`` report (``quant_<method>_bench.json``):
saturated requests/s and single-request latency side by side.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

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


def footprint(url: str, pid: int, device: str) -> dict[str, Any]:
    """What the server at ``url`` (process ``pid``) holds: memory, weight bytes, KV-cache bytes."""
    with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=10) as response:  # noqa: S310 - loopback
        metrics = response.read().decode()
    found: dict[str, Any] = {"device": device}
    for key, name in (
        ("weight_bytes", "glimpse_engine_weight_bytes"),
        ("kv_cache_bytes", "glimpse_engine_kv_cache_bytes"),
    ):
        match = re.search(rf"^{name} ([0-9.e+]+)$", metrics, re.MULTILINE)
        found[key] = int(float(match.group(1))) if match else None
    if device == "cuda":
        used = subprocess.run(  # noqa: S603 - a fixed command
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],  # noqa: S607
            capture_output=True,
            text=True,
            check=True,
        )
        found["memory"], found["memory_mib"] = "device memory.used", int(used.stdout.split()[0])
    else:
        status = Path(f"/proc/{pid}/status").read_text()
        rss_kib = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE).group(1))  # type: ignore[union-attr]
        found["memory"], found["memory_mib"] = "server RSS", rss_kib // 1024
    return found


def quantization_table(out: Path, methods: list[str], saturated: int) -> str:
    """One Markdown row per method: memory, weights, KV cache, saturated req/s, single-request latency."""
    lines = [
        f"| --quantization | memory | weight bytes | KV cache | req/s at c={saturated} "
        f"| E2E p50 at c={saturated} | alone: E2E p50 | alone: TTFT p50 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method in methods:
        foot_path, bench_path = out / f"quant_{method}.json", out / f"quant_{method}_bench.json"
        if not all(path.exists() and path.stat().st_size for path in (foot_path, bench_path)):
            lines.append(f"| {method} | failed: see quant_{method}.log | | | | | | |")
            continue
        foot = json.loads(foot_path.read_text())
        levels = {level.concurrency: level for level in load_report(bench_path).levels}
        busy, alone = levels.get(saturated), levels.get(1)

        def mib(value: int | None) -> str:
            return "-" if value is None else f"{value / 2**20:,.1f} MiB"

        def secs(dist: Any) -> str:
            return "-" if dist is None else f"{dist.p50:.3f} s"

        lines.append(
            f"| {method} | {foot['memory_mib']:,} MiB ({foot['memory']}) | {mib(foot['weight_bytes'])} "
            f"| {mib(foot['kv_cache_bytes'])} "
            f"| {f'{busy.request_throughput:.2f}' if busy else '-'} | {secs(busy.e2e if busy else None)} "
            f"| {secs(alone.e2e if alone else None)} | {secs(alone.ttft if alone else None)} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["footprint"]:
        print(json.dumps(footprint(args[1], int(args[2]), args[3])))
    elif args[:1] == ["quantization"]:
        level = int(args[args.index("--saturated") + 1]) if "--saturated" in args else 32
        print(quantization_table(Path(args[1]), args[2].split(","), level))
    else:
        main(*args[:2])
