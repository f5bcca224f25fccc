"""``RedisBatchStore`` beyond the shared contract (``test_stores``): two stores on one Redis stand for
two replicas; visibility timeouts run on Redis's own clock, so they are short and real."""

from __future__ import annotations

import asyncio
import secrets

import pytest
from tests.unit.batches.stores import custom_ids, new_batch, ok, output, redis_store

from glimpse.batches import BatchStatus, RedisBatchStore
from glimpse.batches._redis_keys import GROUP
from glimpse.errors import NotReady

#: A visibility timeout short enough to wait out in a test.
SHORT = 0.5


@pytest.fixture
async def replicas(redis_server, tmp_path, clock):
    """Two stores on one Redis prefix and one shared directory: two replicas of one deployment."""
    prefix = f"t{secrets.token_hex(4)}"
    stores = [
        redis_store(redis_server, tmp_path, clock, prefix, visibility_timeout_s=SHORT) for _ in range(2)
    ]
    for store in stores:
        await store.open()
    yield stores
    for store in stores:
        await store.close()


async def test_two_replicas_split_the_lines_and_each_is_answered_once(replicas):
    a, b = replicas
    batch = await a.create_batch(new_batch(count=40), max_active=5)
    assert (await b.get_batch(batch.id, "key:a")).total == 40  # any replica sees it
    first, second = await asyncio.gather(a.claim("wa", 25, 30), b.claim("wb", 25, 30))
    assert len(first) + len(second) == 40
    assert {line.custom_id for line in first}.isdisjoint(line.custom_id for line in second)
    for store, worker, lines in ((a, "wa", first), (b, "wb", second)):
        for line in lines:
            assert await store.complete(worker, line, ok(line.custom_id))
    assert await b.finalize_ready() == [batch.id]
    done, out, _ = await output(a, batch.id)
    assert done.status is BatchStatus.COMPLETED
    assert sorted(custom_ids(out.path)) == sorted(f"req-{i}" for i in range(40))


async def test_a_dead_replicas_lines_are_reclaimed_after_the_visibility_timeout(replicas):
    dead, live = replicas
    batch = await dead.create_batch(new_batch(count=3), max_active=5)
    held = await dead.claim("dead", 2, SHORT)  # and then its process is killed: no release
    (rest,) = await live.claim("live", 5, SHORT)
    assert rest.custom_id == "req-2"
    assert await live.claim("live", 5, SHORT) == []  # the dead one's claims have not lapsed yet
    assert await live.complete("live", rest, ok(rest.custom_id))
    await asyncio.sleep(SHORT + 0.2)
    reclaimed = await live.claim("live", 5, SHORT)
    assert sorted(line.custom_id for line in reclaimed) == ["req-0", "req-1"]
    for line in reclaimed:
        assert await live.complete("live", line, ok(line.custom_id))
    assert not await dead.complete("dead", held[0], ok("late"))  # answered already: dropped
    assert await live.finalize_ready() == [batch.id]
    done, out, _ = await output(live, batch.id)
    assert sorted(custom_ids(out.path)) == ["req-0", "req-1", "req-2"]
    assert (done.completed, done.failed) == (3, 0)


async def test_a_renewed_claim_is_not_taken(replicas):
    a, b = replicas
    await a.create_batch(new_batch(count=1), max_active=5)
    (line,) = await a.claim("wa", 1, SHORT)
    for _ in range(3):
        await asyncio.sleep(SHORT * 0.6)
        await a.renew("wa", [line], SHORT)
        assert await b.claim("wb", 1, SHORT) == []
    await asyncio.sleep(SHORT + 0.2)  # wa stops renewing
    (taken,) = await b.claim("wb", 1, SHORT)
    assert taken.custom_id == line.custom_id
    await a.renew("wa", [line], SHORT)  # wa no longer holds it: its renewal takes nothing back
    pending = await b.client.xpending_range(b.keys.lines(line.batch_id), GROUP, "-", "+", 10)
    assert [entry["consumer"] for entry in pending] == ["wb"]
    assert await a.complete("wa", line, ok("wa"))  # the first answer wins, whoever gives it
    assert not await b.complete("wb", taken, ok("wb"))


async def test_a_cancelled_batch_finishes_when_a_dead_replicas_claims_lapse(replicas):
    dead, live = replicas
    batch = await dead.create_batch(new_batch(count=3), max_active=5)
    await dead.claim("dead", 1, SHORT)
    await live.cancel_batch(batch.id, "key:a")
    assert await live.finalize_ready() == []  # the line may still be running somewhere
    await asyncio.sleep(SHORT + 0.2)
    assert await live.finalize_ready() == [batch.id]
    done, out, err = await output(live, batch.id)
    assert done.status is BatchStatus.CANCELLED
    assert (out, err) == (None, None)


async def test_two_replicas_finalizing_at_once_write_one_set_of_files(replicas):
    a, b = replicas
    batch = await a.create_batch(new_batch(count=2, refused=1), max_active=5)
    for line in await a.claim("wa", 5, 30):
        await a.complete("wa", line, ok(line.custom_id))
    done_a, done_b = await asyncio.gather(a.finalize_ready(), b.finalize_ready())
    assert batch.id in done_a + done_b
    done, out, err = await output(b, batch.id)
    assert done.status is BatchStatus.COMPLETED
    assert custom_ids(out.path) == ["req-0", "req-1"]
    assert custom_ids(err.path) == ["bad-0"]
    assert [f.id for f in await a.list_files("key:a", "batch_output", 10, None)] == [err.id, out.id]
    assert sorted(p.name for p in a.files_dir.iterdir()) == sorted([out.path.name, err.path.name])


async def test_a_redis_that_is_down_answers_503(tmp_path, clock):
    store = RedisBatchStore("redis://127.0.0.1:1/0", tmp_path, timeout_s=0.5, clock=clock)
    await store.open()  # the server starts without it
    with pytest.raises(NotReady):
        await store.create_batch(new_batch(), max_active=5)
    with pytest.raises(NotReady):
        await store.claim("w", 1, 30)
    await store.close()
