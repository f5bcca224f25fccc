"""Hostile-images memory benchmark: does the server's RSS come back after a flood of large images?

Usage: python bench/rss_images.py [--rounds 6] [--concurrency 4] [--quick] [--tolerance 0.10]

Starts ``glimpse serve --model tiny`` on a free loopback port, warms it up with
ordinary image requests, reads its resident set size (RSS, /proc: the server's and that of
every process it started), then runs the hostile rounds: every round sends
``--concurrency`` requests at once, each a mix of

* four 20-megapixel PNGs in ~100 KB (refused 413 from their headers),
* four 12-megapixel PNGs (48 MP, under the per-request limit: decoded under the
  pixel budget; then answered, or refused 413 by the engine's token budget when the
  model's processor makes that many tokens of them: the shipped tiny model's does not),
* four 1-megapixel PNGs (answered).

It samples RSS during the run (peak) and reads it again once the server is idle.
PASS when the RSS after the run is within ``--tolerance`` of the RSS after warm-up.
Linux only (reads /proc). ``--quick`` is the short form the test suite runs.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
from PIL import Image

ROUTE = "/v1/chat/completions"


@dataclass(frozen=True)
class Shape:
    name: str
    width: int
    height: int
    images: int


HOSTILE = (Shape("4x20MP", 5000, 4000, 4), Shape("4x12MP", 4000, 3000, 4), Shape("4x1MP", 1000, 1000, 4))
QUICK = (Shape("4x20MP", 5000, 4000, 4), Shape("4x12MP", 4000, 3000, 4), Shape("2x1MP", 1000, 1000, 2))


def rss_bytes(pid: int) -> int:
    """The RSS of the server and every process it started (its engine process, preprocessing
    workers): the images cross from one to the next, and a leak in any of them counts."""
    total = 0
    for member in _tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{member}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
    if total == 0:
        raise RuntimeError(f"no VmRSS for pid {pid}")
    return total


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux: ``/proc/PID/task/TID/children``)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    todo.extend(int(child) for child in children.read().split())
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def png_data_url(width: int, height: int, seed: int) -> str:
    """A decodable PNG with a little texture (not one flat colour), a few hundred KB at most."""
    image = Image.new("RGB", (width, height), (seed * 37 % 256, 90, 160))
    stripe = Image.new("RGB", (width, max(1, height // 16)), (250, seed * 53 % 256, 10))
    for top in range(0, height, height // 4 or 1):
        image.paste(stripe, (0, top))
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=6)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def chat_body(urls: list[str], n: int) -> dict[str, object]:
    content: list[dict[str, object]] = [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    content.append({"type": "text", "text": f"What is in these pictures? ({n})"})
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 8}


class Server:
    def __init__(self, log_path: Path, extra_env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "GLIMPSE_OBS__LOG_LEVEL": "WARNING",
            "GLIMPSE_GUARD__AUDIT_STORE": "off",
            **extra_env,
        }
        cmd = [sys.executable, "-m", "glimpse", "serve", "--model", "tiny", "--port", str(self.port)]
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(  # noqa: S603 - our own CLI with fixed arguments
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"glimpse serve exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise TimeoutError("glimpse serve did not become ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(os.getpgid(self.proc.pid), signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(os.getpgid(self.proc.pid), signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()


class PeakSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.05):
            try:
                self.peak = max(self.peak, rss_bytes(self.pid))
            except (OSError, RuntimeError):
                return

    def stop(self) -> None:
        self._done.set()
        self.join()


async def send_round(client: httpx.AsyncClient, bodies: list[dict[str, object]]) -> list[int]:
    responses = await asyncio.gather(*(client.post(ROUTE, json=body) for body in bodies))
    return [r.status_code for r in responses]


async def run_load(
    url: str, shapes: tuple[Shape, ...], rounds: int, concurrency: int
) -> tuple[Counter[str], float]:
    """The hostile rounds; returns the status counts per shape and the seconds taken."""
    urls = {
        shape.name: [png_data_url(shape.width, shape.height, i) for i in range(shape.images)]
        for shape in shapes
    }
    counts: Counter[str] = Counter()
    headers = {"Cache-Control": "no-cache"}
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=300, headers=headers) as client:
        for round_index in range(rounds):
            picks = [shapes[(round_index + i) % len(shapes)] for i in range(concurrency)]
            bodies = [
                chat_body(urls[shape.name], round_index * concurrency + i) for i, shape in enumerate(picks)
            ]
            for shape, status in zip(picks, await send_round(client, bodies), strict=True):
                counts[f"{shape.name} {status}"] += 1
    return counts, time.perf_counter() - started


async def warm_up(url: str, requests: int) -> None:
    small = [png_data_url(640, 480, i) for i in range(2)]
    async with httpx.AsyncClient(base_url=url, timeout=120, headers={"Cache-Control": "no-cache"}) as client:
        for n in range(requests):
            (await client.post(ROUTE, json=chat_body(small, n))).raise_for_status()


def settle(pid: int, quiet_s: float) -> int:
    """RSS once the server has been idle for ``quiet_s`` (the last responses' buffers are gone)."""
    time.sleep(quiet_s)
    return rss_bytes(pid)


def mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=4, help="ordinary requests before the start RSS")
    parser.add_argument("--tolerance", type=float, default=0.10)
    parser.add_argument("--quick", action="store_true", help="the short form: 3 rounds of 2, smaller mix")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server (repeatable)")
    args = parser.parse_args(argv)
    shapes = QUICK if args.quick else HOSTILE
    rounds, concurrency = (3, 2) if args.quick else (args.rounds, args.concurrency)
    extra_env = dict(item.split("=", 1) for item in args.env)
    with tempfile.TemporaryDirectory(prefix="glimpse-rss-") as tmp:
        server = Server(Path(tmp) / "server.log", extra_env)
        try:
            server.wait_ready()
            pid = server.proc.pid
            asyncio.run(warm_up(server.url, args.warmup))
            start = settle(pid, 1.0)
            sampler = PeakSampler(pid)
            sampler.start()
            counts, elapsed = asyncio.run(run_load(server.url, shapes, rounds, concurrency))
            sampler.stop()
            after = settle(pid, 2.0)
            log = (Path(tmp) / "server.log").read_text(errors="replace")
        finally:
            server.stop()
    ratio = after / start
    ok = ratio <= 1 + args.tolerance and "Traceback" not in log
    print(f"hostile rounds: {rounds} x {concurrency} requests in {elapsed:.1f} s")
    for key, count in sorted(counts.items()):
        print(f"  {key}: {count}")
    print(f"RSS after warm-up: {mib(start)}")
    print(f"RSS peak during the run: {mib(max(sampler.peak, after))}")
    print(f"RSS after the run (idle 2 s): {mib(after)} ({100 * (ratio - 1):+.1f} %)")
    if "Traceback" in log:
        print("server log has a traceback:\n" + log[log.index("Traceback") - 200 :][:3000])
    verdict = "PASS" if ok else "FAIL"
    change, limit = 100 * (ratio - 1), 100 * args.tolerance
    print(f"{verdict}: RSS after the run {change:+.1f} % of its start (limit +{limit:.0f} %)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
