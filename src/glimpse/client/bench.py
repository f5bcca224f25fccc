"""``glimpse bench``: a load generator for any OpenAI-compatible chat endpoint.

In the spirit of ``vllm bench serve``, so Glimpse, vLLM and SGLang can be compared
on the same work: closed loop at fixed concurrency levels or open loop at Poisson
request rates, streaming every request and timing it on a monotonic clock.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from glimpse.client._args import csv_floats, csv_ints, output_path, positive_float, positive_int
from glimpse.client._http import build_client, error_message
from glimpse.client.bench_compare import render_compare
from glimpse.client.bench_inputs import BodySource, RequestOptions, directory_inputs, synthetic_inputs
from glimpse.client.bench_report import BenchReport, load_report, render_report, save_report, write_plot
from glimpse.client.bench_runner import (
    OnResult,
    Send,
    poisson_offsets,
    run_closed_loop,
    run_open_loop,
    send_chat_request,
)
from glimpse.client.bench_stats import LevelSummary, RequestResult, Slo, summarize_level

__all__ = ["Level", "Plan", "bench", "register_bench", "run_bench", "run_compare"]

logger = logging.getLogger(__name__)

#: Above this share of one core the client, not the server, may be what limits the numbers.
CPU_WARN_FRACTION = 0.8
DEFAULT_NUM_REQUESTS = 100


def register_bench(subparsers: Any) -> None:
    """Add ``bench`` (and ``bench compare``) to the CLI's subparsers."""
    p = subparsers.add_parser("bench", help="Load-test an OpenAI-compatible endpoint.")
    p.add_argument("--url", default="http://127.0.0.1:8080", help="server base URL")
    p.add_argument("--model", help="model name (default: the first one /v1/models lists)")
    p.add_argument("--api-key", help="sent as a Bearer token")
    load = p.add_argument_group("load")
    load.add_argument("--concurrency", type=csv_ints, help="closed-loop levels, e.g. 1,8,32 (default 1)")
    load.add_argument("--rate", type=csv_floats, help="open-loop Poisson request rates in req/s, e.g. 2,4")
    load.add_argument("--max-concurrency", type=positive_int, help="cap on requests in flight with --rate")
    load.add_argument("--num-requests", type=positive_int, help="requests per level (default 100)")
    load.add_argument("--duration", type=positive_float, help="seconds per level instead of a count")
    load.add_argument("--warmup", type=int, default=2, help="requests sent first and not measured")
    load.add_argument("--seed", type=int, default=0, help="seed for arrivals and synthetic images")
    data = p.add_argument_group("inputs")
    data.add_argument("--image-size", type=csv_ints, default=[448], help="synthetic square images, px")
    data.add_argument("--image-format", choices=("jpeg", "png"), default="jpeg")
    data.add_argument(
        "--same-image",
        action="store_true",
        help="send one identical synthetic image per size, to measure a prefix or image cache; by default "
        "each request's image gets its own bottom stripe of noise (from --seed and the request's number), "
        "since vLLM and SGLang cache images whatever Cache-Control says",
    )
    data.add_argument(
        "--images",
        type=Path,
        help="folder of real images instead of synthetic ones, sent unchanged (cycled, so they repeat)",
    )
    data.add_argument("--questions", type=Path, help="text file, one question per line")
    data.add_argument("--max-tokens", type=positive_int, default=128)
    data.add_argument("--ignore-eos", action="store_true", help="generate exactly --max-tokens tokens")
    data.add_argument("--temperature", type=float)
    data.add_argument(
        "--allow-cache",
        action="store_true",
        help="let the server answer repeated requests from its result cache; by default every request "
        "carries Cache-Control: no-cache so the engine does the work",
    )
    out = p.add_argument_group("report")
    out.add_argument("--slo-ttft", type=positive_float, help="goodput objective for TTFT, seconds")
    out.add_argument("--slo-e2e", type=positive_float, help="goodput objective for E2E latency, seconds")
    out.add_argument("--timeout", type=positive_float, default=600.0, help="per-request timeout, seconds")
    out.add_argument("--json", type=output_path, dest="json_path", help="write the report as JSON")
    out.add_argument("--plot", type=output_path, help="write latency vs throughput as a PNG")
    p.set_defaults(func=run_bench)
    sub = p.add_subparsers(dest="bench_command", required=False, metavar="{compare}")
    c = sub.add_parser("compare", help="compare two --json reports side by side")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    c.set_defaults(func=run_compare)


def _console() -> Console:
    """The terminal's width, or a wide page when piped (so tables are not cut to 80 columns)."""
    console = Console()
    return console if console.is_terminal else Console(width=200)


def run_compare(args: argparse.Namespace) -> int:
    console = _console()
    try:
        a, b = load_report(args.a), load_report(args.b)
    except (OSError, ValueError) as exc:
        Console(stderr=True).print(f"[red]error:[/red] {escape(str(exc))}")
        return 2
    if render_compare(a, b, console, names=(escape(args.a.name), escape(args.b.name))) == 0:
        Console(stderr=True).print("[red]error:[/red] the reports share no load level")
        return 1
    return 0


def run_bench(args: argparse.Namespace) -> int:
    err = Console(stderr=True)
    if args.concurrency and args.rate:
        err.print("[red]error:[/red] choose --concurrency or --rate, not both")
        return 2
    try:
        report = asyncio.run(bench(args, err))
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/yellow]")
        return 130
    except (OSError, ValueError, httpx.HTTPError) as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        return 2
    render_report(report, _console())
    try:
        if args.json_path:
            save_report(report, args.json_path)
        if args.plot:
            write_plot(report, args.plot)
    except OSError as exc:  # e.g. the folder went away during the run: the tables above still stand
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        return 2
    return 0 if all(level.completed for level in report.levels) else 1


async def _discover_model(client: httpx.AsyncClient) -> str:
    response = await client.get("/v1/models")
    if response.status_code != 200:
        raise ValueError(f"GET /v1/models failed with {error_message(response)}; pass --model")
    models = response.json().get("data") or []
    if not models:
        raise ValueError("the server lists no models; pass --model")
    return str(models[0]["id"])


def _inputs(args: argparse.Namespace, model: str) -> list[BodySource]:
    options = RequestOptions(model, args.max_tokens, args.ignore_eos, args.temperature)
    if args.images is not None:
        return list(directory_inputs(args.images, options, questions_file=args.questions))
    return synthetic_inputs(
        args.image_size, options, fmt=args.image_format, seed=args.seed, same_image=args.same_image
    )


@dataclass(slots=True, frozen=True)
class Level:
    concurrency: int | None = None
    rate: float | None = None

    @property
    def label(self) -> str:
        return f"c={self.concurrency}" if self.rate is None else f"rate={self.rate:g}"


@dataclass(slots=True, frozen=True)
class Plan:
    """The run, decided from the arguments before any request is sent."""

    levels: tuple[Level, ...]
    num_requests: int | None
    duration_s: float | None
    max_concurrency: int | None
    slo: Slo
    seed: int

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Plan:
        if args.rate:
            levels = tuple(Level(rate=rate) for rate in args.rate)
        else:
            levels = tuple(Level(concurrency=c) for c in args.concurrency or [1])
        count = args.num_requests if args.num_requests or args.duration else DEFAULT_NUM_REQUESTS
        slo = Slo(ttft=args.slo_ttft, e2e=args.slo_e2e)
        return cls(levels, count, args.duration, args.max_concurrency, slo, args.seed)

    @property
    def pool_size(self) -> int | None:
        """Connections needed so that no request waits inside the client; ``None``: no cap."""
        if self.levels[0].rate is not None:
            return self.max_concurrency
        return max(level.concurrency or 1 for level in self.levels)


async def bench(
    args: argparse.Namespace, err: Console, *, transport: httpx.AsyncBaseTransport | None = None
) -> BenchReport:
    """The whole run; ``transport`` lets tests put a fake server behind the real client."""
    plan = Plan.from_args(args)
    client = build_client(
        args.url,
        api_key=args.api_key,
        max_connections=plan.pool_size,
        timeout_s=args.timeout,
        headers=None if args.allow_cache else {"Cache-Control": "no-cache"},
        transport=transport,
    )
    async with client:
        model = args.model or await _discover_model(client)
        inputs = await asyncio.to_thread(_inputs, args, model)
        sent = itertools.count()  # across warm-up and levels, so no two requests of the run share an image

        async def send(index: int) -> RequestResult:
            body = inputs[index % len(inputs)].body_for(next(sent))
            return await send_chat_request(client, body)

        report = BenchReport(url=str(client.base_url), model=model, levels=[], config=_config(args))
        if args.warmup > 0:
            err.print(f"warming up with {args.warmup} request(s)")
            width = min(args.warmup, plan.levels[0].concurrency or 1)
            warm = await run_closed_loop(
                send, width, num_requests=args.warmup, duration_s=None, on_result=lambda _: None
            )
            if not any(r.ok for r in warm):
                raise ValueError(f"every warm-up request failed, first: {warm[0].error}")
            _warn_if_no_usage(report, sum(1 for r in warm if r.ok and r.tokens_from_chunks))
        rng = random.Random(plan.seed)  # noqa: S311 -- reproducible arrivals, not a secret
        for level in plan.levels:
            summary = await _run_level(send, level, plan, rng, err)
            report.levels.append(summary)
            _warn_if_no_usage(report, summary.tokens_from_chunks)
            if summary.client_cpu > CPU_WARN_FRACTION:
                message = (
                    f"{summary.label}: the client used {summary.client_cpu:.0%} of a CPU core; "
                    "its own overhead may limit these numbers (run it on another machine or fewer levels)"
                )
                logger.warning("%s", message)
                report.warnings.append(message)
    return report


NO_USAGE_WARNING = (
    "the server sent no usage in its streams, so output tokens were counted as content chunks: "
    "throughput and TPOT are off wherever a chunk holds more or less than one token"
)


def _warn_if_no_usage(report: BenchReport, requests_without_usage: int) -> None:
    """Once per run, not per request: a server either sends usage or it does not."""
    if requests_without_usage and NO_USAGE_WARNING not in report.warnings:
        logger.warning("%s", NO_USAGE_WARNING)
        report.warnings.append(NO_USAGE_WARNING)


async def _drive(
    send: Send, level: Level, plan: Plan, rng: random.Random, on_result: OnResult
) -> list[RequestResult]:
    if level.rate is not None:
        offsets = poisson_offsets(
            level.rate, num_requests=plan.num_requests, duration_s=plan.duration_s, rng=rng
        )
        return await run_open_loop(send, offsets, max_concurrency=plan.max_concurrency, on_result=on_result)
    return await run_closed_loop(
        send,
        level.concurrency or 1,
        num_requests=plan.num_requests,
        duration_s=plan.duration_s,
        on_result=on_result,
    )


async def _run_level(send: Send, level: Level, plan: Plan, rng: random.Random, err: Console) -> LevelSummary:
    total = float(plan.num_requests) if plan.num_requests else float(plan.duration_s or 0)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    status = TextColumn("ok {task.fields[ok]} err {task.fields[err]}")
    with Progress(*columns, status, console=err) as bar:
        task = bar.add_task(level.label, total=total, ok=0, err=0)
        ok = failed = 0
        wall0, cpu0 = time.perf_counter(), time.process_time()

        def on_result(result: RequestResult) -> None:
            nonlocal ok, failed
            ok, failed = (ok + 1, failed) if result.ok else (ok, failed + 1)
            done = ok + failed if plan.num_requests else min(time.perf_counter() - wall0, total)
            bar.update(task, completed=done, ok=ok, err=failed)

        results = await _drive(send, level, plan, rng, on_result)
        wall = time.perf_counter() - wall0
        cpu = (time.process_time() - cpu0) / wall if wall > 0 else 0.0
        bar.update(task, completed=total)
    return summarize_level(
        results,
        label=level.label,
        duration_s=wall,
        concurrency=level.concurrency,
        rate=level.rate,
        slo=plan.slo,
        client_cpu=cpu,
    )


def _config(args: argparse.Namespace) -> dict[str, Any]:
    keys = (
        *("concurrency", "rate", "max_concurrency", "num_requests", "duration", "warmup", "image_size"),
        *("image_format", "max_tokens", "ignore_eos", "temperature", "slo_ttft", "slo_e2e", "seed"),
        *("same_image", "allow_cache"),
    )
    config: dict[str, Any] = {key: getattr(args, key) for key in keys}
    config["images"] = str(args.images) if args.images else None
    config["argv"] = sys.argv[1:]
    return config
