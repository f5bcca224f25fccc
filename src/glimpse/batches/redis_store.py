"""The ``BatchStore`` replicas share: batch and file records and the line queue in Redis, file
contents in a directory every replica mounts (``batch.dir`` on a shared volume).

Any replica answers any call: a batch made through one is listed, worked off and
cancelled through the others. The queue is ``RedisLineQueue`` (a stream per batch, one
consumer group). Steps that must not interleave across replicas (registering a batch
against its owner's limit, settling, closing) are Lua scripts, which Redis runs
atomically. Finalizing runs on whichever replica sees a batch settle first, and may run
on two at once: both write the same result files under the same ids. Redis must keep
what it is told (``appendonly yes``, ``maxmemory-policy noeviction``): a queue in a
cache that evicts loses lines.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO, cast

import anyio
from redis.asyncio import Redis

from glimpse.batches._filedir import FileDir
from glimpse.batches._redis_keys import (
    GROUP,
    Fields,
    Keys,
    batch_from_hash,
    check_durability,
    file_from_hash,
    hash_of,
    members,
    redis_errors,
)
from glimpse.batches.lines import expired_line
from glimpse.batches.records import (
    BatchRecord,
    BatchStatus,
    ClaimedLine,
    FileRecord,
    LineOutcome,
    NewBatch,
    final_status,
    new_id,
    result_file_id,
)
from glimpse.batches.redis_queue import RedisLineQueue
from glimpse.errors import NotFound, RateLimited

__all__ = ["CLIENT_NAME", "RedisBatchStore"]

#: How the store's connections name themselves in Redis (``CLIENT LIST``).
CLIENT_NAME = "glimpse-batches"

#: Lines sent to Redis per round trip when a batch is queued or expired.
_CHUNK = 500

# Count the owner's unfinished batches and, under the limit, index the new one (-1); else the count.
_REGISTER = """
local running = redis.call('SCARD', KEYS[1])
if running >= tonumber(ARGV[1]) then return running end
redis.call('SADD', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[2])
return -1
"""

_CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'in_progress' and status ~= 'validating' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'cancelling', 'cancelling_at', ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
"""

# Close a finalizing batch: its end status and result files; its outputs and stream go.
_CLOSE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'finalizing' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1])
redis.call('HSETNX', KEYS[1], ARGV[2], ARGV[3])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'output_file_id', ARGV[4]) end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'error_file_id', ARGV[5]) end
redis.call('ZREM', KEYS[2], ARGV[6])
redis.call('SREM', KEYS[3], ARGV[6])
redis.call('DEL', KEYS[4], KEYS[5])
return 1
"""


class RedisBatchStore:
    """``BatchStore`` on Redis and a shared directory (see the module's docstring)."""

    def __init__(
        self,
        url: str,
        directory: Path,
        *,
        key_prefix: str = "glimpse:batch",
        timeout_s: float = 5.0,
        visibility_timeout_s: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.files = FileDir(directory / "files")
        self.files_dir = self.files.directory
        # Its own pool, not the cache's: a durable store waits longer and fails loudly (503),
        # where the cache and the guard give up at once and serve without Redis.
        self.client: Redis = Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            decode_responses=True,
            client_name=CLIENT_NAME,
        )
        self.keys = Keys(key_prefix)
        self.queue = RedisLineQueue(self.client, self.keys)
        self._visibility_s = visibility_timeout_s
        self._clock = clock
        self._register = self.client.register_script(_REGISTER)
        self._cancel = self.client.register_script(_CANCEL)
        self._close = self.client.register_script(_CLOSE)

    def _now(self) -> int:
        return int(self._clock())

    async def open(self) -> None:
        """Make the files directory and check the Redis keeps what it is told (a Redis down at
        start-up fails batch calls with 503, not the server)."""
        await anyio.to_thread.run_sync(self.files.create)
        await check_durability(self.client)

    async def close(self) -> None:
        await self.client.aclose()

    # -- files ----------------------------------------------------------------------------------

    async def _put_file(self, record: FileRecord) -> None:
        seq = await self.client.incr(self.keys.seq)
        fields: Fields = {
            "id": record.id,
            "owner": record.owner,
            "filename": record.filename,
            "purpose": record.purpose,
            "bytes": record.bytes,
            "created_at": record.created_at,
        }
        async with self.client.pipeline(transaction=True) as pipe:
            _ = pipe.hset(self.keys.file(record.id), mapping=fields)
            _ = pipe.zadd(self.keys.files(record.owner), {record.id: seq})
            _ = pipe.zadd(self.keys.files_by_age, {record.id: record.created_at})
            await pipe.execute()

    async def add_file(
        self, owner: str, filename: str, purpose: str, content: BinaryIO, max_bytes: int | None = None
    ) -> FileRecord:
        """Store an upload; ``RequestTooLarge`` (nothing kept) once it passes ``max_bytes``."""
        file_id = new_id("file-")
        size = await anyio.to_thread.run_sync(self.files.write_upload, file_id, content, max_bytes)
        record = FileRecord(file_id, owner, filename, purpose, size, self._now(), self.files.path(file_id))
        try:
            async with redis_errors():
                await self._put_file(record)
        except BaseException:
            await anyio.to_thread.run_sync(self.files.remove, file_id)
            raise
        return record

    async def get_file(self, file_id: str, owner: str) -> FileRecord:
        async with redis_errors():
            values = await hash_of(self.client, self.keys.file(file_id))
        if not values or values["owner"] != owner:
            raise NotFound(f"No such file: {file_id!r}.", param="file_id")
        return file_from_hash(values, self.files.path(file_id))

    async def _page(self, index: str, after: str | None, limit: int) -> list[tuple[str, float]]:
        """Up to ``limit`` (id, seq) of an index, newest first, after the id ``after``."""
        top: str | float = "+inf"
        if after is not None:
            score = await self.client.zscore(index, after)
            if score is None:
                return []
            top = f"({score}"
        pairs = await self.client.zrevrangebyscore(index, top, "-inf", start=0, num=limit, withscores=True)
        return cast("list[tuple[str, float]]", pairs)

    async def _hashes(self, keys: Sequence[str]) -> list[dict[str, str]]:
        async with self.client.pipeline(transaction=False) as pipe:
            for key in keys:
                _ = pipe.hgetall(key)
            return cast("list[dict[str, str]]", await pipe.execute())

    async def list_files(
        self, owner: str, purpose: str | None, limit: int, after: str | None
    ) -> list[FileRecord]:
        """Newest first; ``after``: the last id of the previous page."""
        found: list[FileRecord] = []
        async with redis_errors():
            while len(found) < limit:
                page = await self._page(self.keys.files(owner), after, max(limit, 100))
                if not page:
                    break
                for values in await self._hashes([self.keys.file(file_id) for file_id, _ in page]):
                    if values and (purpose is None or values["purpose"] == purpose):
                        found.append(file_from_hash(values, self.files.path(values["id"])))
                after = page[-1][0]
        return found[:limit]

    async def _forget_files(self, records: Sequence[tuple[str, str]]) -> None:
        """Remove (file id, owner) records and their contents."""
        async with self.client.pipeline(transaction=True) as pipe:
            for file_id, owner in records:
                _ = pipe.delete(self.keys.file(file_id))
                _ = pipe.zrem(self.keys.files(owner), file_id)
                _ = pipe.zrem(self.keys.files_by_age, file_id)
            await pipe.execute()
        for file_id, _ in records:
            await anyio.to_thread.run_sync(self.files.remove, file_id)

    async def delete_file(self, file_id: str, owner: str) -> None:
        await self.get_file(file_id, owner)
        async with redis_errors():
            await self._forget_files([(file_id, owner)])

    async def purge_files(self, created_before: int) -> int:
        """Delete every file (record and content) created before ``created_before``; how many."""
        async with redis_errors():
            ids = cast(
                "list[str]",
                await self.client.zrangebyscore(self.keys.files_by_age, "-inf", f"({created_before}"),
            )
            found = await self._hashes([self.keys.file(file_id) for file_id in ids])
            await self._forget_files([(i, f.get("owner", "")) for i, f in zip(ids, found, strict=True)])
        return len(ids)

    # -- batches --------------------------------------------------------------------------------

    async def _queue_lines(self, batch_id: str, fields: Fields, batch: NewBatch) -> None:
        stream = self.keys.lines(batch_id)
        async with self.client.pipeline(transaction=False) as pipe:
            _ = pipe.hset(self.keys.batch(batch_id), mapping=fields)
            _ = pipe.xgroup_create(stream, GROUP, id="0", mkstream=True)
            if batch.refused:
                refused: Fields = {i: f"1{outcome.output}" for i, (_, outcome) in batch.refused.items()}
                _ = pipe.hset(self.keys.outputs(batch_id), mapping=refused)
            await pipe.execute()
        for start in range(0, len(batch.lines), _CHUNK):
            async with self.client.pipeline(transaction=False) as pipe:
                for index, custom_id, body in batch.lines[start : start + _CHUNK]:
                    _ = pipe.xadd(stream, {"idx": index, "custom_id": custom_id, "body": body})
                await pipe.execute()

    def _limited(self, running: int, max_active: int) -> RateLimited:
        return RateLimited(
            f"{running} of your batches are unfinished; at most {max_active} may be at once.", retry_after=60
        )

    async def create_batch(self, batch: NewBatch, max_active: int) -> BatchRecord:
        """Queue a validated batch's lines; ``RateLimited`` if its owner has ``max_active`` unfinished.

        The lines are written before the batch is indexed, so no worker sees half a batch;
        a crash in between leaves keys nothing refers to.
        """
        batch_id, now = new_id("batch_"), self._now()
        async with redis_errors():
            running = await self.client.scard(self.keys.owner_active(batch.owner))
            if running >= max_active:  # checked again atomically below; this spares queueing in vain
                raise self._limited(running, max_active)
            seq = await self.client.incr(self.keys.seq)
            fields: Fields = {
                "id": batch_id,
                "owner": batch.owner,
                "principal": batch.principal,
                "input_file_id": batch.input_file_id,
                "endpoint": batch.endpoint,
                "completion_window": batch.completion_window,
                "status": str(BatchStatus.IN_PROGRESS),
                "created_at": now,
                "expires_at": now + batch.window_s,
                "total": len(batch.lines) + len(batch.refused),
                "completed": 0,
                "failed": len(batch.refused),
                "in_progress_at": now,
                "seq": seq,
            }
            if batch.metadata is not None:
                fields["metadata"] = json.dumps(dict(batch.metadata))
            await self._queue_lines(batch_id, fields, batch)
            running = await self._register(
                keys=[
                    self.keys.owner_active(batch.owner),
                    self.keys.unfinished,
                    self.keys.running,
                    self.keys.batches(batch.owner),
                ],
                args=[max_active, batch_id, seq],
            )
            if running >= 0:
                await self.client.delete(
                    self.keys.batch(batch_id), self.keys.lines(batch_id), self.keys.outputs(batch_id)
                )
                raise self._limited(running, max_active)
        return batch_from_hash({str(key): str(value) for key, value in fields.items()})

    async def get_batch(self, batch_id: str, owner: str) -> BatchRecord:
        async with redis_errors():
            values = await hash_of(self.client, self.keys.batch(batch_id))
        if not values or values["owner"] != owner:
            raise NotFound(f"No such batch: {batch_id!r}.", param="batch_id")
        return batch_from_hash(values)

    async def list_batches(self, owner: str, limit: int, after: str | None) -> list[BatchRecord]:
        """Newest first; ``after``: the last id of the previous page."""
        async with redis_errors():
            page = await self._page(self.keys.batches(owner), after, limit)
            found = await self._hashes([self.keys.batch(batch_id) for batch_id, _ in page])
        return [batch_from_hash(values) for values in found if values]

    async def cancel_batch(self, batch_id: str, owner: str) -> BatchRecord:
        """Stop handing out the batch's lines; those running finish, then it is ``cancelled``."""
        await self.get_batch(batch_id, owner)
        async with redis_errors():
            keys = [self.keys.batch(batch_id), self.keys.running]
            await self._cancel(keys=keys, args=[self._now(), batch_id])
        return await self.get_batch(batch_id, owner)

    # -- the line queue ---------------------------------------------------------------------------

    async def claim(self, worker: str, count: int, lease_s: float) -> list[ClaimedLine]:
        async with redis_errors():
            return await self.queue.claim(worker, count, lease_s)

    async def renew(self, worker: str, lines: Sequence[ClaimedLine], lease_s: float) -> None:
        async with redis_errors():
            await self.queue.renew(worker, lines, lease_s)

    async def complete(self, worker: str, line: ClaimedLine, outcome: LineOutcome) -> bool:
        async with redis_errors():
            return await self.queue.complete(worker, line, outcome)

    async def release(self, worker: str, lines: Sequence[ClaimedLine]) -> None:
        async with redis_errors():
            await self.queue.release(worker, lines)

    # -- finalizing -----------------------------------------------------------------------------

    async def _fill_expired(self, batch_id: str) -> None:
        """Answer ``batch_expired`` for each line still in the stream (an answered line's entry is
        deleted with its answer), as the error file's entries."""
        stream, start = self.keys.lines(batch_id), "-"
        keys = [self.keys.batch(batch_id), self.keys.outputs(batch_id)]
        while entries := cast(
            "list[tuple[str, dict[str, str]]]", await self.client.xrange(stream, start, "+", count=_CHUNK)
        ):
            pairs = [v for _, f in entries for v in (f["idx"], f"1{expired_line(f['custom_id'])}")]
            await self.queue.fill_script(keys=keys, args=pairs)
            start = f"({entries[-1][0]}"

    async def _result_file(self, batch: Mapping[str, str], lines: list[str], failed: bool) -> str:
        if not lines:
            return ""
        file_id = result_file_id(batch["id"], failed)
        size = await anyio.to_thread.run_sync(self.files.write_lines, file_id, lines)
        name = f"{batch['id']}_{'error' if failed else 'output'}.jsonl"
        record = FileRecord(
            file_id, batch["owner"], name, "batch_output", size, self._now(), self.files.path(file_id)
        )
        await self._put_file(record)
        return file_id

    async def _finalize(self, batch_id: str) -> None:
        batch = await hash_of(self.client, self.keys.batch(batch_id))
        if batch.get("status") != BatchStatus.FINALIZING:
            return
        if "expired_at" in batch:
            await self._fill_expired(batch_id)
        outputs = await hash_of(self.client, self.keys.outputs(batch_id))
        ordered = [outputs[index] for index in sorted(outputs, key=int)]
        output_id = await self._result_file(batch, [o[1:] for o in ordered if o[0] == "0"], failed=False)
        error_id = await self._result_file(batch, [o[1:] for o in ordered if o[0] == "1"], failed=True)
        stamps = [batch.get("cancelling_at"), batch.get("expired_at")]
        status, stamp = final_status(*(None if at is None else int(at) for at in stamps))
        await self._close(
            keys=[
                self.keys.batch(batch_id),
                self.keys.unfinished,
                self.keys.owner_active(batch["owner"]),
                self.keys.outputs(batch_id),
                self.keys.lines(batch_id),
            ],
            args=[str(status), stamp, self._now(), output_id, error_id, batch_id],
        )

    async def finalize_ready(self) -> list[str]:
        """Expire the running batches past their window, then write the result files of every batch
        with nothing left to run and close it; their ids."""
        finished: list[str] = []
        async with redis_errors():
            for batch_id in await members(self.client, self.keys.unfinished):
                now, key = self._now(), self.keys.batch(batch_id)
                await self.queue.expire_script(keys=[key, self.keys.running], args=[now, batch_id])
                if await self.client.hget(key, "status") == BatchStatus.CANCELLING:
                    await self.queue.drop_lapsed(batch_id, self._visibility_s)
                settled = await self.queue.settle_script(
                    keys=[key, self.keys.outputs(batch_id), self.keys.lines(batch_id), self.keys.running],
                    args=[now, GROUP, batch_id],
                )
                if settled:
                    await self._finalize(batch_id)
                    finished.append(batch_id)
        return finished
