"""The Redis store's key names, its records as Redis hashes, and what it checks of its Redis.

Every key starts with the configured prefix. Per batch: a hash of its fields, a hash of
its answered lines (line index -> ``0``/``1`` for output/error, then the JSON line), and
the stream of its queued lines. Indexes are sorted sets scored by a creation sequence,
so listings are newest first and the worker takes the oldest batch first.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import fields
from pathlib import Path
from typing import cast

from redis.asyncio import Redis
from redis.exceptions import RedisError
from redis.typing import EncodableT

from glimpse.batches.records import BatchRecord, BatchStatus, FileRecord
from glimpse.errors import NotReady

__all__ = [
    "GROUP",
    "Fields",
    "Keys",
    "batch_from_hash",
    "check_durability",
    "file_from_hash",
    "hash_of",
    "members",
    "redis_errors",
]

#: A hash to write (the client encodes every value).
Fields = dict[EncodableT, EncodableT]

logger = logging.getLogger(__name__)

#: The consumer group every replica's worker reads each batch's stream in.
GROUP = "glimpse"

_INT_FIELDS = frozenset(f.name for f in fields(BatchRecord) if "int" in str(f.type))


class Keys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        #: The creation sequence: orders files and batches.
        self.seq = f"{prefix}:seq"
        #: Every file by creation time (retention).
        self.files_by_age = f"{prefix}:files-by-age"
        #: Batches not yet finished, and those whose lines may be claimed (``in_progress``).
        self.unfinished = f"{prefix}:unfinished"
        self.running = f"{prefix}:running"

    def file(self, file_id: str) -> str:
        return f"{self.prefix}:file:{file_id}"

    def files(self, owner: str) -> str:
        return f"{self.prefix}:files:{owner}"

    def batch(self, batch_id: str) -> str:
        return f"{self.prefix}:batch:{batch_id}"

    def batches(self, owner: str) -> str:
        return f"{self.prefix}:batches:{owner}"

    def owner_active(self, owner: str) -> str:
        """The owner's unfinished batches (its limit on concurrent batches)."""
        return f"{self.prefix}:active:{owner}"

    def outputs(self, batch_id: str) -> str:
        return f"{self.prefix}:out:{batch_id}"

    def lines(self, batch_id: str) -> str:
        return f"{self.prefix}:lines:{batch_id}"


async def hash_of(client: Redis, key: str) -> dict[str, str]:
    """A hash's fields (the store's client decodes replies to ``str``)."""
    return cast("dict[str, str]", await client.hgetall(key))


async def members(client: Redis, key: str) -> list[str]:
    """A sorted set's members, lowest score first."""
    return cast("list[str]", await client.zrange(key, 0, -1))


def batch_from_hash(values: Mapping[str, str]) -> BatchRecord:
    """A batch's hash as a record (absent fields are None; extra fields such as ``principal``
    are the store's own)."""
    known = {f.name for f in fields(BatchRecord)}
    data: dict[str, object] = {}
    for name, value in values.items():
        if name in known:
            data[name] = int(value) if name in _INT_FIELDS else value
    data["status"] = BatchStatus(values["status"])
    data["metadata"] = json.loads(values["metadata"]) if "metadata" in values else None
    return BatchRecord(**data)  # type: ignore[arg-type]


def file_from_hash(values: Mapping[str, str], path: Path) -> FileRecord:
    return FileRecord(
        values["id"],
        values["owner"],
        values["filename"],
        values["purpose"],
        int(values["bytes"]),
        int(values["created_at"]),
        path,
    )


@contextlib.asynccontextmanager
async def redis_errors() -> AsyncIterator[None]:
    """Redis failing is the server's trouble, not the caller's: a 503 to retry, named once here."""
    try:
        yield
    except (RedisError, OSError) as exc:
        raise NotReady("The batch queue (Redis) is unreachable; try again shortly.", retry_after=5) from exc


async def check_durability(client: Redis) -> None:
    """Warn when the Redis may lose queued lines: it evicts keys under memory pressure, or does not
    log every write (appendonly). Best effort: a Redis down at start-up is only noted (batch calls
    say 503)."""
    try:
        memory = await client.info("memory")
        persistence = await client.info("persistence")
    except (RedisError, OSError) as exc:
        logger.warning("the batch queue's Redis is unreachable at start-up: %s", exc)
        return
    policy = memory.get("maxmemory_policy", "noeviction")
    if policy != "noeviction":
        logger.warning(
            "the batch queue's Redis evicts keys (maxmemory-policy %s): queued lines can be lost; "
            "use a Redis with noeviction",
            policy,
        )
    if not persistence.get("aof_enabled"):
        logger.warning(
            "the batch queue's Redis has appendonly off: a Redis crash loses what it took since its "
            "last snapshot, if any"
        )
