"""``glimpse audit tail|query``: read the SQLite audit store as a table or JSON lines.

glimpse audit tail [-n 20] [--follow] [--json] [--path FILE]
glimpse audit query [--client ID] [--since 1h|ISO] [--until ..] [--route R] [--status N]
                    [--flagged] [--request-id ID] [--limit N] [--json] [--path FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from glimpse.config import Settings
from glimpse.errors import InvalidRequest
from glimpse.guard.audit import default_audit_path
from glimpse.guard.audit_query import AuditFilter, AuditReader, parse_time

__all__ = ["follow", "register_audit"]

SettingsFactory = Callable[[], Settings]


def _store_path(args: argparse.Namespace, settings_factory: SettingsFactory) -> Path:
    if args.path is not None:
        return Path(args.path)
    guard = settings_factory().guard
    if guard.audit_store != "sqlite":
        raise InvalidRequest(
            f"audit_store is {guard.audit_store!r}: only the SQLite store can be queried "
            "(pass --path to read another SQLite file)"
        )
    return guard.audit_log_path or default_audit_path("sqlite")


def _status_style(status: int) -> str:
    if status >= 500:
        return "bold red"
    if status >= 400:
        return "yellow"
    return "green"


def _tokens(row: dict[str, Any]) -> str:
    if row["tokens_in"] is None and row["tokens_out"] is None:
        return ""
    return f"{row['tokens_in'] or 0}/{row['tokens_out'] or 0}"


def _short_time(iso: str) -> str:
    return iso[:19].replace("T", " ")


def _table(rows: list[dict[str, Any]]) -> Table:
    table = Table(box=None, header_style="bold")
    for name, wrap in (
        ("time (UTC)", False),
        ("request id", True),
        ("client", True),
        ("route", True),
        ("status", False),
        ("ms", False),
        ("tokens in/out", False),
        ("guard", False),
    ):
        table.add_column(name, overflow="fold", no_wrap=not wrap)
    for row in rows:
        table.add_row(
            _short_time(row["ts"]),
            escape(row["request_id"]),
            escape(row["client_id"]),
            escape(row["route"]),
            f"[{_status_style(row['status'])}]{row['status']}[/]",
            f"{row['latency_ms']:.0f}",
            _tokens(row),
            "[red]flagged[/]" if row["guard_flagged"] else "",
        )
    return table


def _console() -> Console:
    """The terminal's width, or a wide page when piped (so ids are not folded)."""
    console = Console(highlight=False)
    return console if console.is_terminal else Console(highlight=False, width=200)


def _line(row: dict[str, Any]) -> str:
    flag = " [red]flagged[/]" if row["guard_flagged"] else ""
    return (
        f"{_short_time(row['ts'])} {escape(row['request_id'])} {escape(row['client_id'])} "
        f"{escape(row['route'])} "
        f"[{_status_style(row['status'])}]{row['status']}[/] {row['latency_ms']:.0f} ms {_tokens(row)}{flag}"
    )


def _emit(rows: Iterable[dict[str, Any]], console: Console, as_json: bool, compact: bool) -> None:
    rows = list(rows)
    if as_json:
        for row in rows:
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
        sys.stdout.flush()
    elif compact:
        for row in rows:
            console.print(_line(row), highlight=False)
    elif rows:
        console.print(_table(rows))
    else:
        console.print("[dim]no matching audit records[/]")


def follow(
    reader: AuditReader,
    last_id: int,
    on_rows: Callable[[list[dict[str, Any]]], None],
    stop: threading.Event,
    interval_s: float = 1.0,
) -> int:
    """Poll for records after ``last_id`` until ``stop`` is set; returns the last id seen."""
    while not stop.is_set():
        rows = reader.after(last_id)
        if rows:
            on_rows(rows)
            last_id = rows[-1]["id"]
        else:
            stop.wait(interval_s)
    return last_id


def _tail(args: argparse.Namespace, settings_factory: SettingsFactory) -> int:
    console = _console()
    with AuditReader(_store_path(args, settings_factory)) as reader:
        rows = reader.tail(args.n)
        _emit(rows, console, args.json, compact=args.follow)
        if args.follow:
            last_id = rows[-1]["id"] if rows else 0
            follow(
                reader,
                last_id,
                lambda new: _emit(new, console, args.json, compact=True),
                threading.Event(),
                args.interval,
            )
    return 0


def _query(args: argparse.Namespace, settings_factory: SettingsFactory) -> int:
    now = time.time()
    flt = AuditFilter(
        client_id=args.client,
        since=parse_time(args.since, now) if args.since else None,
        until=parse_time(args.until, now) if args.until else None,
        route=args.route,
        status=args.status,
        flagged=args.flagged,
        request_id=args.request_id,
        limit=args.limit,
    )
    with AuditReader(_store_path(args, settings_factory)) as reader:
        _emit(reader.query(flt), _console(), args.json, compact=False)
    return 0


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--path",
        default=None,
        help="SQLite audit file (default: from settings, GLIMPSE_GUARD__AUDIT_LOG_PATH).",
    )
    parser.add_argument("--json", action="store_true", help="One JSON object per line instead of a table.")


def register_audit(subparsers: Any, settings_factory: SettingsFactory) -> None:
    """Add ``audit tail`` and ``audit query`` to the ``glimpse`` command's subparsers."""
    audit = subparsers.add_parser("audit", help="Read the audit log (SQLite store).")
    commands = audit.add_subparsers(dest="audit_command", required=True)

    tail = commands.add_parser("tail", help="Show the newest audit records.")
    tail.add_argument("-n", type=_positive, default=20, help="How many records (default 20).")
    tail.add_argument("--follow", "-f", action="store_true", help="Keep printing new records (Ctrl-C ends).")
    tail.add_argument("--interval", type=float, default=1.0, help="Seconds between polls with --follow.")
    _common(tail)
    tail.set_defaults(func=lambda args: _tail(args, settings_factory))

    query = commands.add_parser("query", help="Search audit records (newest --limit matches, oldest first).")
    query.add_argument("--client", default=None, help="Client id, e.g. key:ci-bot, jwt:alice, ip:10.0.0.1.")
    query.add_argument("--since", default=None, help="ISO 8601 time or an age like 30m, 1h, 2d.")
    query.add_argument("--until", default=None, help="ISO 8601 time or an age (records before it).")
    query.add_argument("--route", default=None, help="Route template, e.g. /v1/chat/completions.")
    query.add_argument("--status", type=int, default=None, help="HTTP status, e.g. 429.")
    query.add_argument("--flagged", action="store_true", help="Only requests the prompt guard flagged.")
    query.add_argument("--request-id", default=None, help="One request id.")
    query.add_argument("--limit", type=_positive, default=100, help="Most records shown (default 100).")
    _common(query)
    query.set_defaults(func=lambda args: _query(args, settings_factory))
