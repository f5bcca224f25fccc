"""The Redis store's line queue: one Redis Stream per batch, read by one consumer group that every
replica's worker joins.

A worker claims lines with ``XREADGROUP`` (never delivered before) after ``XAUTOCLAIM``
(delivered to a consumer that has not touched them for the visibility timeout: its
replica died, or it released them). A live worker renews its claims by resetting their
idle time. Recording an answer is one Lua script, so it is atomic: the output goes in
the batch's outputs hash with ``HSETNX`` (the first answer for a line wins, a second is
dropped), the batch's counter rises only then, and the entry is acknowledged and
deleted. An answer is recorded only while the batch is ``in_progress`` or
``cancelling``, so nothing changes a batch once it is finalizing.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import groupby
from typing import cast

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from glimpse.batches._redis_keys import GROUP, Keys, members
from glimpse.batches.records import BatchStatus, ClaimedLine, LineOutcome

__all__ = ["RedisLineQueue"]

#: A stream entry as the client returns it: its id and fields.
_Entry = tuple[str, dict[str, str]]

#: Released lines get this idle time, so the next ``XAUTOCLAIM`` of any worker takes them.
_RELEASED_IDLE_MS = 10 * 365 * 24 * 3600 * 1000

_COMPLETE = """
local recorded = 0
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'in_progress' or status == 'cancelling' then
  recorded = redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2])
  if recorded == 1 then redis.call('HINCRBY', KEYS[1], ARGV[3], 1) end
end
if redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('XACK', KEYS[3], ARGV[5], ARGV[4])
  if recorded == 1 then redis.call('XDEL', KEYS[3], ARGV[4]) end
end
return recorded
"""

# Renew (idle 0) or release (idle huge) the entries this consumer still holds; another
# consumer's (it took a lapsed claim) are left alone.
_HOLD = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local held = 0
for i = 4, #ARGV do
  local entry = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #entry > 0 and entry[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'IDLE', ARGV[3], 'JUSTID')
    held = held + 1
  end
end
return held
"""

# A batch with nothing left to run becomes 'finalizing' (and leaves the running index):
# in_progress with every line answered, or cancelling with no line held by any worker.
_SETTLE = """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'in_progress' then
  if redis.call('HLEN', KEYS[2]) < tonumber(redis.call('HGET', KEYS[1], 'total')) then return 0 end
elseif status == 'cancelling' then
  if redis.call('EXISTS', KEYS[3]) == 1 and redis.call('XPENDING', KEYS[3], ARGV[2])[1] > 0 then
    return 0
  end
elseif status == 'finalizing' then return 1
else return 0 end
redis.call('HSET', KEYS[1], 'status', 'finalizing')
redis.call('HSETNX', KEYS[1], 'finalizing_at', ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[3])
return 1
"""

_EXPIRE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'in_progress' then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'expires_at')) > tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'status', 'finalizing', 'finalizing_at', ARGV[1], 'expired_at', ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
"""

# Answer unanswered lines with the given error lines (idx, line pairs), counting each as failed.
_FILL = """
local added = 0
for i = 1, #ARGV, 2 do added = added + redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 1]) end
if added > 0 then redis.call('HINCRBY', KEYS[1], 'failed', added) end
return added
"""


def _missing_group(exc: ResponseError) -> bool:
    """The batch's stream went away (it was finalized) between listing it and reading it."""
    return str(exc).startswith("NOGROUP")


class RedisLineQueue:
    """``LineQueue``'s claim, renew, complete and release over per-batch streams (see the module)."""

    def __init__(self, client: Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._complete = client.register_script(_COMPLETE)
        self._hold = client.register_script(_HOLD)
        self.settle_script = client.register_script(_SETTLE)
        self.expire_script = client.register_script(_EXPIRE)
        self.fill_script = client.register_script(_FILL)

    async def _principal(self, batch_id: str) -> str | None:
        status, principal = cast(
            "list[str | None]", await self.client.hmget(self.keys.batch(batch_id), ["status", "principal"])
        )
        return principal if status == BatchStatus.IN_PROGRESS else None

    async def _claim_from(self, batch_id: str, worker: str, count: int, lease_ms: int) -> list[ClaimedLine]:
        stream = self.keys.lines(batch_id)
        try:
            reply = await self.client.xautoclaim(stream, GROUP, worker, lease_ms, "0-0", count=count)
            entries = cast("list[_Entry]", reply[1])
            if len(entries) < count:
                read = await self.client.xreadgroup(GROUP, worker, {stream: ">"}, count=count - len(entries))
                entries += [entry for _, got in cast("list[tuple[str, list[_Entry]]]", read) for entry in got]
        except ResponseError as exc:
            if _missing_group(exc):
                return []
            raise
        if not entries:
            return []
        principal = await self._principal(batch_id)
        if principal is None:  # cancelled or expired meanwhile: these lines run no more
            await self.client.xack(stream, GROUP, *(entry_id for entry_id, _ in entries))
            return []
        return [
            ClaimedLine(
                batch_id, int(fields["idx"]), fields["custom_id"], fields["body"], principal, entry_id
            )
            for entry_id, fields in entries
        ]

    async def claim(self, worker: str, count: int, lease_s: float) -> list[ClaimedLine]:
        """Up to ``count`` lines of running batches, oldest batch first, held by consumer ``worker``."""
        claimed: list[ClaimedLine] = []
        for batch_id in await members(self.client, self.keys.running):
            if len(claimed) >= count:
                break
            claimed += await self._claim_from(batch_id, worker, count - len(claimed), int(lease_s * 1000))
        return claimed

    async def _hold_lines(self, worker: str, lines: Sequence[ClaimedLine], idle_ms: int) -> None:
        for batch_id, held in groupby(
            sorted(lines, key=lambda line: line.batch_id), lambda line: line.batch_id
        ):
            ids = [line.token for line in held]
            await self._hold(keys=[self.keys.lines(batch_id)], args=[GROUP, worker, idle_ms, *ids])

    async def renew(self, worker: str, lines: Sequence[ClaimedLine], lease_s: float) -> None:
        """Reset the idle time of the lines ``worker`` still holds (the lease is the server's
        ``XAUTOCLAIM`` min-idle, the claimer's visibility timeout)."""
        await self._hold_lines(worker, lines, 0)

    async def release(self, worker: str, lines: Sequence[ClaimedLine]) -> None:
        """Hand lines back unanswered: they look long idle, so the next claim of any worker takes them."""
        await self._hold_lines(worker, lines, _RELEASED_IDLE_MS)

    async def complete(self, worker: str, line: ClaimedLine, outcome: LineOutcome) -> bool:
        """Record the line's answer unless it has one (or its batch is finalizing); acknowledge it."""
        recorded = await self._complete(
            keys=[
                self.keys.batch(line.batch_id),
                self.keys.outputs(line.batch_id),
                self.keys.lines(line.batch_id),
            ],
            args=[
                line.index,
                f"{int(outcome.failed)}{outcome.output}",
                "failed" if outcome.failed else "completed",
                line.token,
                GROUP,
            ],
        )
        return bool(recorded)

    async def drop_lapsed(self, batch_id: str, lease_s: float) -> None:
        """Acknowledge, unanswered, the lines of a cancelled batch that dead workers held, so
        that it can finish (the lines of a live worker finish and are answered)."""
        stream = self.keys.lines(batch_id)
        try:
            ids = await self.client.xautoclaim(
                stream, GROUP, "finalizer", int(lease_s * 1000), "0-0", count=1000, justid=True
            )
        except ResponseError as exc:
            if _missing_group(exc):
                return
            raise
        if ids:
            await self.client.xack(stream, GROUP, *cast("list[str]", ids))
