"""Create API keys: prints the key once and the hashed entry for the keys file.

    python -m glimpse.guard.keys new --name ci-bot [--expires-at 2026-01-01T00:00:00Z] \\
        [--scopes infer,chat] [--rate-limit 60] [--token-quota 200000]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from glimpse.guard.keystore import KEY_ENTRIES, generate_key, hash_key
from glimpse.guard.scopes import SCOPES

__all__ = ["main"]


def _entry(name: str, digest: str, args: argparse.Namespace) -> dict[str, object]:
    entry: dict[str, object] = {"name": name, "sha256": digest}
    if args.expires_at:
        entry["expires_at"] = args.expires_at
    if args.scopes:
        entry["scopes"] = [scope for scope in args.scopes.split(",") if scope]
    if args.rate_limit is not None:
        entry["rate_limit_per_minute"] = args.rate_limit
    if args.token_quota is not None:
        entry["token_quota_per_day"] = args.token_quota
    return entry


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m glimpse.guard.keys", description="Manage Glimpse API keys."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    new = commands.add_parser("new", help="create a key; prints it once, with the entry for the keys file")
    new.add_argument("--name", required=True)
    new.add_argument("--expires-at", default=None, help="ISO 8601 time, e.g. 2026-01-01T00:00:00Z")
    new.add_argument(
        "--scopes",
        default="",
        help=f"comma-separated routes the key may use, of {','.join(sorted(SCOPES))} (default: all)",
    )
    new.add_argument("--rate-limit", type=int, default=None, help="requests per minute for this key")
    new.add_argument("--token-quota", type=int, default=None, help="tokens per UTC day for this key")
    args = parser.parse_args(argv)
    key = generate_key()
    entry = _entry(args.name, hash_key(key), args)
    try:
        KEY_ENTRIES.validate_python([entry])  # refuse to print an entry the server would reject
    except ValidationError as exc:
        parser.error("; ".join(str(error["msg"]) for error in exc.errors()))
    sys.stdout.write(f"key (shown once, store it now): {key}\n")
    sys.stdout.write("entry for the keys file:\n" + json.dumps(entry, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
