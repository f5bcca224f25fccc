"""``glimpse batch``: ask one question about every image in a folder (or a list).

Each answer is appended to a JSON-lines file as soon as it arrives, so the file
is both the result and the checkpoint: rerunning the same command skips what
already succeeded and retries what failed. With ``--remote`` the images go to the
server as one Batch API job instead (``batch_remote``), and this command only waits.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import random
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from glimpse.client._args import output_path, positive_int
from glimpse.client._http import RETRY_STATUSES, RetryPolicy, build_client, error_message
from glimpse.client.batch_io import BatchItem, ResultsFile, discover_images, load_list, read_results
from glimpse.client.batch_remote import RemoteBatchError, remote_batch
from glimpse.openai_wire import parse_retry_after

__all__ = ["BatchStats", "batch", "collect_items", "infer_item", "register_batch", "run_batch", "run_items"]

INFER_PATH = "/infer"
Sleep = Callable[[float], Awaitable[None]]


def register_batch(subparsers: Any) -> None:
    p = subparsers.add_parser("batch", help="Analyse every image in a folder, resumably.")
    p.add_argument("directory", nargs="?", type=Path, help="folder of .jpg/.jpeg/.png/.webp images")
    p.add_argument("--list", type=Path, dest="list_file", help="CSV or JSONL with image[,question] instead")
    p.add_argument("--recursive", action="store_true", help="also look in sub-folders")
    p.add_argument("--question", help="question asked about every image (or rows without one)")
    p.add_argument("--out", type=output_path, required=True, help="results, one JSON line per image")
    p.add_argument("--concurrency", type=positive_int, default=4)
    p.add_argument("--url", default="http://127.0.0.1:8080", help="server base URL")
    p.add_argument("--api-key", help="sent as a Bearer token")
    p.add_argument("--max-tokens", type=positive_int, default=256)
    p.add_argument("--max-attempts", type=positive_int, default=5, help="tries per image on 429/503/network")
    p.add_argument("--timeout", type=float, default=600.0, help="per-request timeout, seconds")
    p.add_argument(
        "--remote",
        action="store_true",
        help="submit the images as one Batch API job (/v1/batches) and wait for it, instead of "
        "sending them one by one",
    )
    p.add_argument("--batch-id", help="with --remote: collect this job instead of submitting one")
    p.add_argument("--model", help="with --remote: the model each request names (default: the server's)")
    p.add_argument(
        "--poll-interval", type=float, default=2.0, help="with --remote: seconds between looks at the job"
    )
    p.set_defaults(func=run_batch)


@dataclass(slots=True)
class BatchStats:
    """Mutable on purpose: it outlives an interrupted event loop so the summary can still print."""

    total: int = 0
    skipped: int = 0
    done: int = 0
    failed: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)
    #: The signal that stopped the run (Ctrl-C, or SIGTERM from a scheduler or `kill`).
    interrupted_by: signal.Signals | None = None
    #: With ``--remote``: the server's job, which an interruption leaves running.
    batch_id: str | None = None

    def count(self, record: dict[str, Any]) -> None:
        """Count one written results line."""
        if "response" in record:
            self.done += 1
        else:
            self.failed += 1
            self.reasons[str(record["error"])[:120]] += 1


def collect_items(args: argparse.Namespace) -> list[BatchItem]:
    if (args.directory is None) == (args.list_file is None):
        raise ValueError("give either a DIRECTORY or --list FILE")
    if args.list_file is not None:
        items = load_list(args.list_file, default_question=args.question)
    else:
        if not args.question:
            raise ValueError("--question is required with a directory")
        items = [
            BatchItem(str(p), args.question)
            for p in discover_images(args.directory, recursive=args.recursive)
        ]
    return list({item.key: item for item in items}.values())


def _encode(path: str) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


async def infer_item(
    client: httpx.AsyncClient,
    item: BatchItem,
    *,
    max_tokens: int,
    policy: RetryPolicy,
    rng: random.Random,
    sleep: Sleep = asyncio.sleep,
) -> dict[str, Any]:
    """The result line for one image, after at most ``policy.attempts`` tries."""
    record: dict[str, Any] = {"image": item.image, "question": item.question}
    start = time.perf_counter()
    try:
        image = await asyncio.to_thread(_encode, item.image)
    except OSError as exc:
        return record | {"error": f"unreadable image: {exc}", "status": None, "latency_s": 0.0, "attempts": 0}
    body = {"image": image, "text": item.question, "max_new_tokens": max_tokens}
    status: int | None = None
    outcome: dict[str, Any] = {}
    attempt = 0
    for attempt in range(1, policy.attempts + 1):
        retry_after: float | None = None
        try:
            response = await client.post(INFER_PATH, json=body)
        except httpx.TransportError as exc:
            status, outcome = None, {"error": f"{type(exc).__name__}: {exc}"}
        else:
            status = response.status_code
            outcome = _outcome(response)
            retry_after = parse_retry_after(response.headers.get("retry-after"))
        retryable = status is None or status in RETRY_STATUSES
        if not retryable or attempt == policy.attempts:
            break
        await sleep(policy.delay(attempt, retry_after, rng))
    latency = round(time.perf_counter() - start, 4)
    return record | outcome | {"status": status, "latency_s": latency, "attempts": attempt}


def _outcome(response: httpx.Response) -> dict[str, Any]:
    if response.status_code != 200:
        return {"error": error_message(response)}
    try:
        text = response.json()["response"]
    except (ValueError, KeyError, TypeError):
        return {"error": f"200 without a response field: {response.text[:200]}"}
    return {"response": text}


async def _append_uninterrupted(results: ResultsFile, record: dict[str, Any]) -> None:
    """Ctrl-C waits for a line being written, so it is either whole on disk or not started."""
    write = asyncio.ensure_future(asyncio.to_thread(results.append, record))
    try:
        await asyncio.shield(write)
    except asyncio.CancelledError:
        await write
        raise


async def run_items(
    client: httpx.AsyncClient,
    items: list[BatchItem],
    results: ResultsFile,
    stats: BatchStats,
    *,
    concurrency: int,
    max_tokens: int,
    policy: RetryPolicy,
    on_record: Callable[[dict[str, Any]], None] = lambda _: None,
    sleep: Sleep = asyncio.sleep,
) -> None:
    """``concurrency`` workers pull from one queue; each line is durable before it is counted."""
    queue: asyncio.Queue[BatchItem] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)
    write_lock = asyncio.Lock()
    rng = random.Random()  # noqa: S311 -- retry jitter, not a secret

    async def worker() -> None:
        while not queue.empty() and stats.interrupted_by is None:
            item = queue.get_nowait()
            record = await infer_item(
                client, item, max_tokens=max_tokens, policy=policy, rng=rng, sleep=sleep
            )
            async with write_lock:
                await _append_uninterrupted(results, record)
            stats.count(record)
            on_record(record)

    async with asyncio.TaskGroup() as group:
        for _ in range(min(concurrency, len(items))):
            group.create_task(worker())


#: the signals that stop a run as Ctrl-C does: the lines being written finish, then it exits
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def batch(
    args: argparse.Namespace,
    items: list[BatchItem],
    stats: BatchStats,
    console: Console,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
) -> None:
    """Resume from ``args.out`` and process what is left; ``transport`` is for tests."""
    state = await asyncio.to_thread(read_results, args.out)
    pending = [item for item in items if item.key not in state.done]
    stats.skipped = len(items) - len(pending)
    if state.torn:
        console.print(
            f"[yellow]{escape(str(args.out))}: dropped a torn last line from an interrupted run[/yellow]"
        )
    results = ResultsFile(args.out, state)
    policy = RetryPolicy(attempts=args.max_attempts)
    columns = (TextColumn("batch"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()

    def on_signal(stopped_by: signal.Signals) -> None:  # lines being written finish, then exit
        stats.interrupted_by = stopped_by
        if main is not None:
            main.cancel()

    # Both signals set the flag the workers check before taking an item, as well as cancelling:
    # once, in CI, a Ctrl-C that asyncio.run turned into a cancellation was lost and the run
    # went on to the end (not reproduced since)
    for stop in _STOP_SIGNALS:
        loop.add_signal_handler(stop, on_signal, stop)
    try:
        async with build_client(
            args.url,
            api_key=args.api_key,
            max_connections=args.concurrency,
            timeout_s=args.timeout,
            transport=transport,
        ) as client:
            with Progress(*columns, TextColumn("ETA"), TimeRemainingColumn(), console=console) as bar:
                task = bar.add_task("batch", total=len(pending))
                await run_items(
                    client,
                    pending,
                    results,
                    stats,
                    concurrency=args.concurrency,
                    max_tokens=args.max_tokens,
                    policy=policy,
                    on_record=lambda _: bar.advance(task),
                )
    finally:
        for stop in _STOP_SIGNALS:
            loop.remove_signal_handler(stop)
        results.close()


def _print_summary(stats: BatchStats, out: Path, console: Console) -> None:
    elapsed = time.monotonic() - stats.started
    head = "[yellow]interrupted[/yellow] " if stats.interrupted_by else ""
    console.print(
        f"{head}done {stats.done}, skipped {stats.skipped} (already in {escape(str(out))}), "
        f"failed {stats.failed}, of {stats.total} in {elapsed:.1f}s"
    )
    for reason, count in stats.reasons.most_common():
        console.print(f"  [red]{count} x[/red] {escape(reason)}")


def run_batch(args: argparse.Namespace) -> int:
    err = Console(stderr=True)
    try:
        items = collect_items(args)
    except (OSError, ValueError) as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        return 2
    stats = BatchStats(total=len(items))
    run = remote_batch if args.remote else batch
    try:
        asyncio.run(run(args, items, stats, err))
    except KeyboardInterrupt:
        stats.interrupted_by = signal.SIGINT
    except asyncio.CancelledError:
        if stats.interrupted_by is None:
            raise
    except (OSError, RemoteBatchError) as exc:  # the results file is unusable, or the server said no
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        return 2
    if stats.interrupted_by and stats.batch_id:
        err.print(
            f"the job {stats.batch_id} keeps running on the server; collect it with "
            f"--remote --batch-id {stats.batch_id}"
        )
    _print_summary(stats, args.out, Console())
    if stats.interrupted_by:
        return 128 + stats.interrupted_by  # the shell's status for a death by that signal
    return 1 if stats.failed else 0
