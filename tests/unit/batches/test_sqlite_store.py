"""``SqliteBatchStore`` beyond the shared contract (``test_stores``): leases on an injected clock,
crash recovery, and a database made before batches could expire."""

from __future__ import annotations

import sqlite3

from tests.unit.batches.stores import LEASE, custom_ids, new_batch, ok, output

from glimpse.batches import BatchStatus, SqliteBatchStore


async def _opened(tmp_path, clock) -> SqliteBatchStore:
    store = SqliteBatchStore(tmp_path, clock=clock)
    await store.open()
    return store


async def test_a_crashed_workers_lines_are_queued_again_after_the_visibility_timeout(tmp_path, clock):
    first = await _opened(tmp_path, clock)
    batch = await first.create_batch(new_batch(count=4), max_active=5)
    held = await first.claim("dead", 2, LEASE)
    assert await first.complete("dead", held[0], ok(held[0].custom_id))
    await first.close()  # the process dies holding held[1]: no release

    restarted = await _opened(tmp_path, clock)
    fresh = await restarted.claim("new", 10, LEASE)
    assert [line.custom_id for line in fresh] == ["req-2", "req-3"]  # req-1's claim has not lapsed
    for line in fresh:
        assert await restarted.complete("new", line, ok(line.custom_id))
    assert await restarted.finalize_ready() == []  # req-1 is still claimed by the dead worker
    clock.now += LEASE + 1
    (retaken,) = await restarted.claim("new", 10, LEASE)
    assert retaken.custom_id == "req-1"
    assert not await restarted.complete("dead", held[1], ok("late"))  # the dead worker's late answer
    assert await restarted.complete("new", retaken, ok(retaken.custom_id))
    assert await restarted.finalize_ready() == [batch.id]
    done, out, _ = await output(restarted, batch.id)
    assert sorted(custom_ids(out.path)) == ["req-0", "req-1", "req-2", "req-3"]
    assert (done.completed, done.failed) == (4, 0)
    await restarted.close()


async def test_an_expired_claim_can_be_taken_without_a_restart(tmp_path, clock):
    store = await _opened(tmp_path, clock)
    await store.create_batch(new_batch(count=1), max_active=5)
    (line,) = await store.claim("w1", 1, LEASE)
    clock.now += LEASE / 2
    await store.renew("w1", [line], LEASE)
    clock.now += LEASE * 0.9
    assert await store.claim("w2", 1, LEASE) == []  # renewed: still w1's
    clock.now += LEASE
    (stolen,) = await store.claim("w2", 1, LEASE)
    assert stolen.custom_id == line.custom_id
    assert not await store.complete("w1", line, ok("w1"))
    assert await store.complete("w2", stolen, ok("w2"))
    await store.close()


async def test_finalizing_again_after_a_crash_writes_the_same_files(tmp_path, clock):
    store = await _opened(tmp_path, clock)
    batch = await store.create_batch(new_batch(count=1), max_active=5)
    (line,) = await store.claim("w1", 1, LEASE)
    await store.complete("w1", line, ok(line.custom_id))
    assert store._ready_to_finalize() == [batch.id]  # the process dies here, in 'finalizing'
    assert (await store.get_batch(batch.id, "key:a")).status is BatchStatus.FINALIZING
    assert await store.finalize_ready() == [batch.id]
    done, out, _ = await output(store, batch.id)
    assert done.status is BatchStatus.COMPLETED
    assert custom_ids(out.path) == ["req-0"]
    await store.close()


async def test_a_database_from_before_expiry_gains_the_column(tmp_path, clock):
    store = await _opened(tmp_path, clock)
    await store.close()
    db = sqlite3.connect(tmp_path / "batches.sqlite3")
    db.execute("ALTER TABLE batches DROP COLUMN expired_at")
    db.close()
    reopened = await _opened(tmp_path, clock)
    batch = await reopened.create_batch(new_batch(count=1), max_active=5)
    assert (await reopened.get_batch(batch.id, "key:a")).expired_at is None
    await reopened.close()
