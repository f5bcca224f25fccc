"""Memory of the full-size GLM-4.6V-Flash architecture served quantized, through Glimpse's own commands.

Usage:
    nice -n 19 python bench/quantized_memory.py --quantization int8
    nice -n 19 python bench/quantized_memory.py --quantization int4 --keep --workdir /tmp/qmem
    nice -n 19 python bench/quantized_memory.py --quantization int8 --checkpoint DIR  # a bf16 checkpoint

Each step is a process of its own, run as an operator would, so each peak is that step's:

1. The bfloat16 checkpoint (real GLM-4.6V-Flash sizes, random weights, about 20.6 GB on
   disk): ``glimpse make-tiny-model WORKDIR/bf16 --full-size``, which on a CPU writes it one
   module at a time. Skipped when ``--checkpoint`` names one, or WORKDIR holds one.
2. ``int8``: ``glimpse quantize BF16 WORKDIR/int8 --quantization int8`` (each weight quantized
   as it is read, then the model saved), and the server loads WORKDIR/int8 as it is.
   ``int4``: torchao cannot save its CPU int4 layout (``Int4OpaqueTensor`` is not among
   the tensor types its safetensors support knows), so the server quantizes the bfloat16
   checkpoint as it loads (``glimpse serve --quantization int4``), which is how int4 runs on a CPU.
3. ``glimpse serve`` on a free loopback port (CPU, bfloat16, one KV-cache slot of
   ``--max-seq-len`` tokens, no warm-up, the engine in the server's process:
   ``GLIMPSE_ENGINE__PROCESS=false``), then one chat completion: a small PNG and a
   question, ``--max-tokens`` greedy tokens.

Printed per step: wall time and peak RSS (the kernel's high-water mark: ``wait4``'s
``ru_maxrss`` for the build and quantize steps, ``VmHWM`` for the server, read once it is
ready and again after the answer); from sampling ``/proc`` 5 times a second, the RSS at
the sampled peak split into anonymous memory and mapped file pages (safetensors files are
memory-mapped; their pages count in RSS while mapped, though the kernel can drop them).
The server's resident weight and KV-cache bytes are read from its ``/metrics``; bfloat16's
size is computed from the parameter count. Goals (issue 19): weights at most 12 GB with
int8 and 8 GB with int4, against 20.6 GB in bfloat16. What is written is deleted at the
end unless ``--keep`` (a ``--checkpoint`` is never deleted). Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

GB = 10**9
GIB = 2**30
#: Resident weight goals of issue 19, in bytes (decimal GB, as the issue states them).
GOALS = {"int8": 12 * GB, "int4": 8 * GB}


@dataclass(slots=True)
class Usage:
    """What one process took: wall time, peak RSS, and the split of its RSS at the sampled peak."""

    label: str
    seconds: float = 0.0
    peak_rss: int = 0
    sampled_rss: int = 0
    sampled_anon: int = 0
    sampled_file: int = 0
    peak_anon: int = 0
    notes: dict[str, Any] = field(default_factory=dict)


def proc_status(pid: int) -> dict[str, int]:
    """The memory lines of /proc/PID/status, in bytes (VmRSS, VmHWM, RssAnon, RssFile, ...)."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name.startswith(("Vm", "Rss")) and rest.strip().endswith("kB"):
                values[name] = int(rest.split()[0]) * 1024
    return values


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(p) for p in task.read_text().split()]
        except OSError:
            continue
    return found


class Sampler(threading.Thread):
    """Samples a process's RSS (and its children's) until stopped; keeps the split at the peak."""

    def __init__(self, pid: int, usage: Usage, interval_s: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.usage = usage
        self.interval_s = interval_s
        self.children_peak = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval_s):
            try:
                status = proc_status(self.pid)
            except OSError:
                return
            rss = status.get("VmRSS", 0)
            u = self.usage
            u.peak_anon = max(u.peak_anon, status.get("RssAnon", 0))
            if rss > u.sampled_rss:
                u.sampled_rss, u.sampled_anon, u.sampled_file = rss, status["RssAnon"], status["RssFile"]
            kids = 0
            for child in children(self.pid):
                try:
                    kids += proc_status(child).get("VmRSS", 0)
                except OSError:
                    continue
            self.children_peak = max(self.children_peak, kids)

    def stop(self) -> None:
        self._done.set()
        self.join()


def glimpse_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "glimpse", *args]


def run_step(label: str, command: list[str], env: dict[str, str], log: Path) -> Usage:
    """Run one command to the end; its peak RSS from ``wait4`` (the kernel's ``ru_maxrss``)."""
    usage = Usage(label)
    started = time.monotonic()
    with log.open("ab") as out:
        out.write(f"$ {' '.join(command)}\n".encode())
        out.flush()
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)  # noqa: S603
        sampler = Sampler(proc.pid, usage)
        sampler.start()
        _, status, rusage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        sampler.stop()
    usage.seconds = time.monotonic() - started
    usage.peak_rss = rusage.ru_maxrss * 1024  # KiB on Linux
    if proc.returncode != 0:
        raise RuntimeError(f"{label} failed with exit status {proc.returncode}; see {log}")
    return usage


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def png_data_url(size: int) -> str:
    """A small PNG with a little texture (a few coloured bands)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (40, 120, 200))
    draw = ImageDraw.Draw(image)
    for band in range(0, size, max(1, size // 4)):
        draw.rectangle((0, band, size, band + size // 8), fill=(230, 180 - band % 128, 30))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def metric(text: str, name: str) -> int | None:
    match = re.search(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.MULTILINE)
    return int(float(match.group(1))) if match else None


def serve_and_ask(
    model: Path, method: str, args: argparse.Namespace, env: dict[str, str], log: Path
) -> Usage:
    """Start ``glimpse serve``, wait until ready, answer one request, stop; the server's usage."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = glimpse_command(
        "serve", "--model", str(model), "--port", str(port), "--device", "cpu", "--dtype", "bfloat16",
        "--max-batch-size", "1", "--no-warmup",
    )  # fmt: skip
    if method == "int4":
        command += ["--quantization", "int4"]
    server_env = {
        **env,
        "GLIMPSE_ENGINE__MAX_SEQ_LEN": str(args.max_seq_len),
        "GLIMPSE_ENGINE__CPU_THREADS": str(args.threads),
        "GLIMPSE_SERVER__REQUEST_TIMEOUT_S": str(args.timeout),
        "GLIMPSE_GUARD__AUDIT_STORE": "off",
        # The model in the server's own process, so its VmHWM and RSS split are the model's
        # (by default the engine runs in a child process, which this does not measure apart).
        "GLIMPSE_ENGINE__PROCESS": "false",
    }
    usage = Usage("serve + one request")
    started = time.monotonic()
    with log.open("ab") as out:
        out.write(f"$ {' '.join(command)}\n".encode())
        out.flush()
        proc = subprocess.Popen(  # noqa: S603 - our own CLI
            command, stdout=out, stderr=subprocess.STDOUT, env=server_env, start_new_session=True
        )
    sampler = Sampler(proc.pid, usage)
    sampler.start()
    try:
        wait_ready(proc, url, args.timeout)
        ready_s = time.monotonic() - started
        loaded = proc_status(proc.pid)
        metrics = httpx.get(f"{url}/metrics", timeout=30).text
        model_id = httpx.get(f"{url}/v1/models", timeout=30).json()["data"][0]["id"]
        body = {
            "model": model_id,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": png_data_url(args.image_size)}},
                        {"type": "text", "text": "What is in this picture?"},
                    ],
                }
            ],
            "max_tokens": args.max_tokens,
            "temperature": 0,
        }
        asked = time.monotonic()
        response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=args.timeout)
        response.raise_for_status()
        answered = response.json()
        request_s = time.monotonic() - asked
        after = proc_status(proc.pid)
    finally:
        sampler.stop()
        stop(proc)
    usage.seconds = time.monotonic() - started
    usage.peak_rss = after["VmHWM"]
    usage.notes = {
        "ready_s": ready_s,
        "request_s": request_s,
        "hwm_at_ready": loaded["VmHWM"],
        "rss_at_ready": loaded["VmRSS"],
        "anon_at_ready": loaded["RssAnon"],
        "file_at_ready": loaded["RssFile"],
        "rss_after": after["VmRSS"],
        "anon_after": after["RssAnon"],
        "file_after": after["RssFile"],
        "children_peak": sampler.children_peak,
        "weight_bytes": metric(metrics, "glimpse_engine_weight_bytes"),
        "kv_cache_bytes": metric(metrics, "glimpse_engine_kv_cache_bytes"),
        "usage": answered.get("usage", {}),
        "answer": answered["choices"][0]["message"].get("content"),
    }
    return usage


def wait_ready(proc: subprocess.Popen[bytes], url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"glimpse serve exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1.0)
    raise TimeoutError(f"glimpse serve was not ready within {timeout_s:.0f} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(os.getpgid(proc.pid), signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(os.getpgid(proc.pid), signal.SIGKILL)
            proc.wait(30)


def parameter_count(checkpoint: Path) -> int:
    """Parameters of a safetensors checkpoint, from its files' headers (no tensor is read)."""
    count = 0
    for path in checkpoint.glob("*.safetensors"):
        with path.open("rb") as file:
            header = json.loads(file.read(int.from_bytes(file.read(8), "little")))
        for name, entry in header.items():
            if name != "__metadata__":
                count += math.prod(entry["shape"])
    return count


def has_checkpoint(directory: Path) -> bool:
    return (directory / "config.json").is_file() and any(directory.glob("*.safetensors"))


def measure(args: argparse.Namespace) -> tuple[list[Usage], int]:
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="glimpse-qmem-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "bench.log"
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    steps: list[Usage] = []
    made: list[Path] = []
    bf16 = Path(args.checkpoint).resolve() if args.checkpoint else workdir / "bf16"
    try:
        if not has_checkpoint(bf16):
            made.append(bf16)
            steps.append(run_step("make-tiny-model --full-size (bf16)", _make(bf16), env, log))
        model = bf16
        if args.quantization == "int8":
            model = workdir / "int8"
            if not has_checkpoint(model):
                made.append(model)
                quantize = glimpse_command(
                    "quantize", str(bf16), str(model), "--quantization", "int8", "--device", "cpu",
                    "--dtype", "bfloat16",
                )  # fmt: skip
                steps.append(run_step("quantize --quantization int8", quantize, env, log))
        steps.append(serve_and_ask(model, args.quantization, args, env, log))
        return steps, parameter_count(bf16)
    except BaseException:
        tail = log.read_text(errors="replace").splitlines()[-40:] if log.exists() else []
        sys.stderr.write("\n".join(["last lines of the log:", *tail]) + "\n")
        raise
    finally:
        if not args.keep:
            for path in made:
                shutil.rmtree(path, ignore_errors=True)
            if not args.workdir:
                shutil.rmtree(workdir, ignore_errors=True)


def _make(directory: Path) -> list[str]:
    return glimpse_command("make-tiny-model", str(directory), "--full-size")


def report(method: str, steps: list[Usage], parameters: int) -> str:
    lines = [
        f"full-size GLM-4.6V-Flash architecture (random weights), {parameters / 1e9:.2f} B parameters; "
        f"bfloat16 weights (computed): {parameters * 2 / GB:.1f} GB ({parameters * 2 / GIB:.2f} GiB)"
    ]
    for u in steps:
        lines.append(
            f"{u.label}: {u.seconds:.0f} s, peak RSS {u.peak_rss / GIB:.2f} GiB "
            f"(sampled peak {u.sampled_rss / GIB:.2f} GiB = {u.sampled_anon / GIB:.2f} anonymous + "
            f"{u.sampled_file / GIB:.2f} mapped files; anonymous peak {u.peak_anon / GIB:.2f} GiB)"
        )
    serve = steps[-1].notes
    weights = serve["weight_bytes"] or 0
    goal = GOALS[method]
    verdict = "meets" if 0 < weights <= goal else "MISSES"
    lines += [
        f"resident weights ({method}, /metrics): {weights / GB:.2f} GB ({weights / GIB:.2f} GiB); "
        f"goal <= {goal / GB:.0f} GB: {verdict}; {weights / (parameters * 2):.1%} of bfloat16",
        f"KV cache (/metrics): {(serve['kv_cache_bytes'] or 0) / 2**20:.0f} MiB",
        f"server: ready in {serve['ready_s']:.0f} s (VmHWM {serve['hwm_at_ready'] / GIB:.2f} GiB; RSS then "
        f"{serve['rss_at_ready'] / GIB:.2f} GiB = {serve['anon_at_ready'] / GIB:.2f} anonymous + "
        f"{serve['file_at_ready'] / GIB:.2f} files)",
        f"one request ({serve['usage']}): {serve['request_s']:.1f} s, answer {serve['answer']!r}",
        f"server after the answer: VmHWM {steps[-1].peak_rss / GIB:.2f} GiB, "
        f"RSS {serve['rss_after'] / GIB:.2f} GiB = {serve['anon_after'] / GIB:.2f} anonymous + "
        f"{serve['file_after'] / GIB:.2f} files; "
        f"preprocessing process(es) peak {serve['children_peak'] / GIB:.2f} GiB",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quantization", choices=sorted(GOALS), default="int8")
    parser.add_argument("--keep", action="store_true", help="Keep the checkpoints written (for another run).")
    parser.add_argument(
        "--workdir", help="Folder for the checkpoints and the log (default: a new temp folder)."
    )
    parser.add_argument("--checkpoint", help="An existing full-size bfloat16 checkpoint to start from.")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the server.")
    parser.add_argument("--max-seq-len", type=int, default=1024, help="The server's one KV-cache slot.")
    parser.add_argument("--image-size", type=int, default=112, help="Side of the square PNG asked about.")
    parser.add_argument("--max-tokens", type=int, default=4, help="Tokens the answer may have.")
    parser.add_argument(
        "--timeout", type=float, default=3600.0, help="Seconds for loading, and for the answer."
    )
    args = parser.parse_args(argv)
    steps, parameters = measure(args)
    sys.stdout.write(report(args.quantization, steps, parameters))
    return 0


if __name__ == "__main__":
    sys.exit(main())
