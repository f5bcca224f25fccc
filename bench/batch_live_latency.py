"""Do live requests keep their latency while a large Batch API job runs? (issue 20)

Usage:
    python bench/batch_live_latency.py                 # starts `glimpse serve --model tiny` itself
    python bench/batch_live_latency.py --url http://host:8080 [--api-key KEY]
    python bench/batch_live_latency.py --rounds 6 --samples 5 --json out.json

Live requests are streamed chat requests sent one at a time, each with its own small image (one
size for all, a colour of its own, so neither the answer cache nor the prefix or image caches
serve them) and ``Cache-Control: no-cache``; time to first token (TTFT) runs from sending the
request to the first chunk that carries text. After ``--warmup`` unmeasured ones, each of
``--rounds`` rounds measures

1. ``--samples`` live requests on the idle server, then
2. as many again while a batch of ``--batch-lines`` lines (``--batch-max-tokens`` tokens each,
   ``ignore_eos``) runs: the batch is created from the uploaded file, and once
   ``--settle-lines`` of its lines are answered (past the start, where every place the batch
   may hold fills at once) the window starts; it must still be in progress when the window ends (else the
   window was not all under batch load, and the run says so). It is then cancelled, and the
   next round starts once its last line has ended.

Alternating short windows keeps a shared machine's changing load from falling on one side
only. Goal (issue 20): the with-batch p50 TTFT over all rounds is at most 1.5x the idle p50.
Prints p50/p99 of both, the ratio, and the batch lines done during the with-batch windows;
exits 1 if the goal is missed or a batch was not running throughout its window.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from overload import tiny_server  # noqa: E402 -- the benchmark's own server launcher

RATIO_GOAL = 1.5
PROMPT = "What colour is the shape?"
LIVE_SIZE = (96, 96)
BATCH_SIZE = (80, 64)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (p99 of 20 samples is the slowest one)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def _png(size: tuple[int, int], index: int) -> str:
    """A data URL of one colour that no other index in this run shares."""
    from PIL import Image

    colour = ((index * 37) % 256, (index * 91 + 64) % 256, (index // 7 * 53 + 128) % 256)
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _messages(image: str, text: str) -> list[dict[str, Any]]:
    content = [{"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": text}]
    return [{"role": "user", "content": content}]


def time_to_first_token(client: httpx.Client, index: int, max_tokens: int) -> float:
    """Seconds from sending one streamed chat request to its first chunk with text."""
    body = {
        "messages": _messages(_png(LIVE_SIZE, index), PROMPT),
        "max_tokens": max_tokens,
        "stream": True,
        "ignore_eos": True,
    }
    payload = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "Cache-Control": "no-cache"}
    first: float | None = None
    started = time.perf_counter()
    with client.stream("POST", "/v1/chat/completions", content=payload, headers=headers) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if first is not None or not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[6:]).get("choices") or [{}]
            delta = choices[0].get("delta") or {}
            if delta.get("content") or delta.get("reasoning_content"):
                first = time.perf_counter() - started
    if first is None:
        raise RuntimeError(f"live request {index} streamed no text")
    return first


def measure(
    client: httpx.Client, first_index: int, count: int, max_tokens: int, pause_s: float
) -> list[float]:
    """``count`` sequential requests' times to first token, images ``first_index`` onwards."""
    samples = []
    for index in range(first_index, first_index + count):
        samples.append(time_to_first_token(client, index, max_tokens))
        time.sleep(pause_s)
    return samples


def batch_input(count: int, max_tokens: int) -> bytes:
    lines = []
    for i in range(count):
        body = {
            "model": "tiny",
            "messages": _messages(_png(BATCH_SIZE, 10_000 + i), f"{PROMPT} ({i})"),
            "max_tokens": max_tokens,
            "ignore_eos": True,
        }
        line = {"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
        lines.append(json.dumps(line))
    return ("\n".join(lines) + "\n").encode()


def upload(client: httpx.Client, content: bytes) -> str:
    files = {"file": ("live-latency.jsonl", content, "application/jsonl")}
    return str(
        client.post("/v1/files", files=files, data={"purpose": "batch"}).raise_for_status().json()["id"]
    )


def start_batch(client: httpx.Client, file_id: str) -> str:
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    return str(client.post("/v1/batches", json=body).raise_for_status().json()["id"])


def batch_state(client: httpx.Client, batch_id: str) -> tuple[str, int]:
    """(status, lines answered so far, failed included)."""
    batch = client.get(f"/v1/batches/{batch_id}").raise_for_status().json()
    counts = batch["request_counts"]
    return str(batch["status"]), int(counts["completed"]) + int(counts["failed"])


def wait_flowing(client: httpx.Client, batch_id: str, lines: int, timeout_s: float) -> int:
    """Once ``lines`` of the batch are answered (past its start, where every place fills at once):
    the lines answered then."""
    deadline = time.monotonic() + timeout_s
    while (state := batch_state(client, batch_id))[1] < lines:
        if state[0] != "in_progress" or time.monotonic() > deadline:
            raise RuntimeError(f"batch {batch_id} did not start: {state}")
        time.sleep(0.1)
    return state[1]


def lines_in_flight(client: httpx.Client) -> int:
    """Batch lines generating on the server now (its ``glimpse_batch_lines_in_flight``)."""
    metrics = client.get("/metrics").raise_for_status().text
    found = re.search(r"^glimpse_batch_lines_in_flight (\S+)$", metrics, re.MULTILINE)
    if found is None:
        raise RuntimeError("the server reports no glimpse_batch_lines_in_flight")
    return int(float(found[1]))


def wait_idle(client: httpx.Client, batch_id: str, timeout_s: float) -> None:
    """Until the cancelled batch has ended and no line of it is generating."""
    deadline = time.monotonic() + timeout_s
    while True:
        if batch_state(client, batch_id)[0] == "cancelled" and lines_in_flight(client) == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"batch {batch_id} still running {timeout_s:g} s after its cancel")
        time.sleep(0.1)


@dataclass(slots=True)
class Rounds:
    """What the rounds measured, pooled."""

    idle: list[float] = field(default_factory=list)
    loaded: list[float] = field(default_factory=list)
    lines_done: int = 0
    window_s: float = 0.0
    statuses: list[str] = field(default_factory=list)
    in_flight: list[int] = field(default_factory=list)  # batch lines generating at each window's end
    exhausted: int = 0  # rounds whose batch ran out of lines during the window


def run_round(
    client: httpx.Client, file_id: str, first_index: int, args: argparse.Namespace, out: Rounds
) -> None:
    """Idle live requests, then the same with a fresh batch running; the batch is cancelled after."""
    out.idle += measure(client, first_index, args.samples, args.max_tokens, args.pause)
    batch_id = start_batch(client, file_id)
    done_before = wait_flowing(client, batch_id, args.settle_lines, args.timeout)
    started = time.monotonic()
    out.loaded += measure(client, first_index + args.samples, args.samples, args.max_tokens, args.pause)
    out.window_s += time.monotonic() - started
    status, done_after = batch_state(client, batch_id)
    out.in_flight.append(lines_in_flight(client))
    client.post(f"/v1/batches/{batch_id}/cancel").raise_for_status()
    out.lines_done += done_after - done_before
    out.statuses.append(status)
    out.exhausted += status != "in_progress" or done_after >= args.batch_lines
    wait_idle(client, batch_id, args.timeout)


def run(url: str, args: argparse.Namespace) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    out = Rounds()
    with httpx.Client(base_url=url, headers=headers, timeout=args.timeout) as client:
        measure(client, 0, args.warmup, args.max_tokens, args.pause)
        file_id = upload(client, batch_input(args.batch_lines, args.batch_max_tokens))
        for round_index in range(args.rounds):
            run_round(client, file_id, 1_000 * (round_index + 1), args, out)
    idle_p50, loaded_p50 = percentile(out.idle, 50), percentile(out.loaded, 50)
    ratio = loaded_p50 / idle_p50
    return {
        "rounds": args.rounds,
        "samples_per_round": args.samples,
        "idle_ttft_s": out.idle,
        "batch_ttft_s": out.loaded,
        "idle_p50_s": idle_p50,
        "idle_p99_s": percentile(out.idle, 99),
        "batch_p50_s": loaded_p50,
        "batch_p99_s": percentile(out.loaded, 99),
        "p50_ratio": ratio,
        "batch_lines": args.batch_lines,
        "batch_lines_done_in_windows": out.lines_done,
        "window_s": out.window_s,
        "batch_statuses_after_windows": out.statuses,
        "batch_lines_in_flight_at_window_ends": out.in_flight,
        "batch_ran_throughout": out.exhausted == 0,
        "passed": ratio <= RATIO_GOAL and out.exhausted == 0,
    }


def _figures(summary: dict[str, Any], phase: str, label: str) -> str:
    p50, p99 = summary[f"{phase}_p50_s"] * 1000, summary[f"{phase}_p99_s"] * 1000
    count = len(summary[f"{phase}_ttft_s"])
    return f"{label:<11} TTFT p50 {p50:7.1f} ms   p99 {p99:7.1f} ms   ({count} requests)"


def render(summary: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"{summary['rounds']} rounds of {summary['samples_per_round']} live requests idle, then as many "
            "with a batch running (sequential, streamed)",
            _figures(summary, "idle", "idle"),
            _figures(summary, "batch", "with batch"),
            f"p50 ratio   {summary['p50_ratio']:.2f} (goal <= {RATIO_GOAL})",
            f"batch lines done during the windows ({summary['window_s']:.1f} s in all): "
            f"{summary['batch_lines_done_in_windows']}; batch status at each window's end: "
            + ", ".join(summary["batch_statuses_after_windows"]),
            "batch lines generating at each window's end: "
            + ", ".join(map(str, summary["batch_lines_in_flight_at_window_ends"])),
            "PASSED" if summary["passed"] else "FAILED",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="a running server (default: start `glimpse serve --model tiny`)")
    parser.add_argument("--api-key")
    parser.add_argument("--rounds", type=int, default=4, help="idle then with-batch windows")
    parser.add_argument("--samples", type=int, default=8, help="live requests per window")
    parser.add_argument(
        "--settle-lines", type=int, default=8, help="batch lines answered before a with-batch window starts"
    )
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured live requests first")
    parser.add_argument("--max-tokens", type=int, default=4, help="per live request")
    parser.add_argument("--pause", type=float, default=0.05, help="seconds between live requests")
    parser.add_argument("--batch-lines", type=int, default=300, help="per round's batch")
    parser.add_argument("--batch-max-tokens", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=120.0, help="per-request client timeout, s")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--server-env", action="append", default=[], metavar="NAME=VALUE", help="for the started server"
    )
    args = parser.parse_args(argv)
    if args.url:
        summary = run(args.url, args)
    else:
        batches = tempfile.mkdtemp(prefix="glimpse-batch-latency-")
        env = {"GLIMPSE_BATCH__DIR": batches, **dict(item.split("=", 1) for item in args.server_env)}
        with tiny_server(env) as url:
            summary = run(url, args)
    sys.stdout.write(render(summary) + "\n")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
