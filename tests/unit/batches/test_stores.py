"""The ``BatchStore`` contract, run on both stores: files, ownership, exactly-once output, cancelling,
limits, expiry and retention."""

from __future__ import annotations

import io
import json

import pytest
from tests.unit.batches.stores import LEASE, custom_ids, new_batch, ok, output

from glimpse.batches import BatchStatus
from glimpse.errors import NotFound, RateLimited, RequestTooLarge


async def test_files_are_stored_listed_and_deleted_per_owner(store):
    first = await store.add_file("key:a", "a.jsonl", "batch", io.BytesIO(b'{"x": 1}\n'))
    second = await store.add_file("key:a", "b.jsonl", "batch", io.BytesIO(b"{}\n"))
    await store.add_file("key:b", "c.jsonl", "batch", io.BytesIO(b"{}\n"))
    assert first.bytes == 9
    assert first.path.read_bytes() == b'{"x": 1}\n'
    assert [f.id for f in await store.list_files("key:a", None, 10, None)] == [second.id, first.id]
    assert [f.id for f in await store.list_files("key:a", None, 1, None)] == [second.id]
    assert [f.id for f in await store.list_files("key:a", None, 10, second.id)] == [first.id]
    assert await store.list_files("key:a", "batch_output", 10, None) == []
    with pytest.raises(NotFound):
        await store.get_file(first.id, "key:b")  # another owner's file does not exist for it
    with pytest.raises(NotFound):
        await store.delete_file(first.id, "key:b")
    await store.delete_file(first.id, "key:a")
    assert not first.path.exists()
    with pytest.raises(NotFound):
        await store.get_file(first.id, "key:a")


async def test_an_upload_over_the_limit_keeps_nothing(store):
    with pytest.raises(RequestTooLarge):
        await store.add_file("key:a", "big.jsonl", "batch", io.BytesIO(b"x" * 3_000_000), max_bytes=2_000_000)
    assert list(store.files_dir.iterdir()) == []
    assert await store.list_files("key:a", None, 10, None) == []


async def test_lines_run_once_and_the_output_holds_each_custom_id_once(store):
    batch = await store.create_batch(new_batch(count=3, refused=1), max_active=5)
    assert (batch.status, batch.total, batch.failed) == (BatchStatus.IN_PROGRESS, 4, 1)
    claimed = await store.claim("w1", 10, LEASE)
    assert [line.custom_id for line in claimed] == ["req-0", "req-1", "req-2"]
    assert await store.claim("w2", 10, LEASE) == []  # all held
    assert await store.finalize_ready() == []  # lines still running
    for line in claimed:
        assert await store.complete("w1", line, ok(line.custom_id))
    assert not await store.complete("w1", claimed[0], ok("again"))  # done already: not answered twice
    assert await store.finalize_ready() == [batch.id]
    done, out, err = await output(store, batch.id)
    assert done.status is BatchStatus.COMPLETED
    assert done.completed_at is not None
    assert (done.completed, done.failed) == (3, 1)
    assert custom_ids(out.path) == ["req-0", "req-1", "req-2"]
    assert custom_ids(err.path) == ["bad-0"]
    assert out.purpose == "batch_output"
    assert await store.finalize_ready() == []


async def test_released_lines_go_back_to_the_queue(store):
    await store.create_batch(new_batch(count=2), max_active=5)
    lines = await store.claim("w1", 2, LEASE)
    await store.release("w1", lines)
    assert [line.custom_id for line in await store.claim("w2", 5, LEASE)] == ["req-0", "req-1"]


async def test_lines_are_handed_out_oldest_batch_first(store):
    first = await store.create_batch(new_batch(count=2), max_active=5)
    second = await store.create_batch(new_batch(count=2), max_active=5)
    claimed = await store.claim("w1", 3, LEASE)
    assert [line.batch_id for line in claimed] == [first.id, first.id, second.id]


async def test_a_cancelled_batch_stops_handing_out_lines_and_keeps_what_was_answered(store):
    batch = await store.create_batch(new_batch(count=3), max_active=5)
    (line,) = await store.claim("w1", 1, LEASE)
    cancelling = await store.cancel_batch(batch.id, "key:a")
    assert cancelling.status is BatchStatus.CANCELLING
    assert await store.claim("w1", 5, LEASE) == []
    assert await store.finalize_ready() == []  # one line is still running
    assert await store.complete("w1", line, ok(line.custom_id))
    assert await store.finalize_ready() == [batch.id]
    done, out, err = await output(store, batch.id)
    assert done.status is BatchStatus.CANCELLED
    assert done.cancelled_at is not None
    assert custom_ids(out.path) == ["req-0"]
    assert err is None
    with pytest.raises(NotFound):
        await store.cancel_batch(batch.id, "key:b")


async def test_active_batches_per_owner_are_limited(store):
    await store.create_batch(new_batch(), max_active=2)
    await store.create_batch(new_batch(), max_active=2)
    with pytest.raises(RateLimited):
        await store.create_batch(new_batch(), max_active=2)
    await store.create_batch(new_batch(owner="key:b"), max_active=2)  # another owner's count


async def test_a_finished_batch_no_longer_counts_against_the_limit(store):
    batch = await store.create_batch(new_batch(count=1), max_active=1)
    (line,) = await store.claim("w1", 1, LEASE)
    await store.complete("w1", line, ok(line.custom_id))
    assert await store.finalize_ready() == [batch.id]
    await store.create_batch(new_batch(), max_active=1)


async def test_batches_are_listed_newest_first_per_owner(store):
    ids = [(await store.create_batch(new_batch(), max_active=9)).id for _ in range(3)]
    await store.create_batch(new_batch(owner="key:b"), max_active=9)
    assert [b.id for b in await store.list_batches("key:a", 2, None)] == ids[::-1][:2]
    assert [b.id for b in await store.list_batches("key:a", 5, ids[1])] == [ids[0]]
    with pytest.raises(NotFound):
        await store.get_batch(ids[0], "key:b")
    assert (await store.get_batch(ids[0], "key:a")).metadata == {"k": "v"}


async def test_a_batch_past_its_window_expires_with_unfinished_lines_in_the_error_file(store, clock):
    batch = await store.create_batch(new_batch(count=4, window_s=60), max_active=5)
    assert batch.expires_at == batch.created_at + 60
    done_line, held = await store.claim("w1", 2, LEASE)
    assert await store.complete("w1", done_line, ok(done_line.custom_id))
    clock.now += 59
    assert await store.finalize_ready() == []  # still inside its window
    clock.now += 2
    assert await store.finalize_ready() == [batch.id]
    assert not await store.complete("w1", held, ok("too late"))  # the window closed on it
    assert await store.claim("w2", 5, LEASE) == []
    expired, out, err = await output(store, batch.id)
    assert expired.status is BatchStatus.EXPIRED
    assert expired.expired_at == int(clock.now)
    assert (expired.completed, expired.failed, expired.total) == (1, 3, 4)
    assert custom_ids(out.path) == ["req-0"]
    errors = [json.loads(line) for line in err.path.read_text().splitlines()]
    assert [e["custom_id"] for e in errors] == ["req-1", "req-2", "req-3"]
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}
    assert all(e["response"] is None for e in errors)


async def test_a_cancelled_batch_does_not_expire(store, clock):
    batch = await store.create_batch(new_batch(count=2, window_s=60), max_active=5)
    (line,) = await store.claim("w1", 1, LEASE)
    await store.cancel_batch(batch.id, "key:a")
    clock.now += 120
    assert await store.finalize_ready() == []  # its running line may still finish
    assert await store.complete("w1", line, ok(line.custom_id))
    assert await store.finalize_ready() == [batch.id]
    assert (await store.get_batch(batch.id, "key:a")).status is BatchStatus.CANCELLED


async def test_files_past_their_retention_are_purged(store, clock):
    old = await store.add_file("key:a", "old.jsonl", "batch", io.BytesIO(b"{}\n"))
    clock.now += 100
    new = await store.add_file("key:b", "new.jsonl", "batch", io.BytesIO(b"{}\n"))
    assert await store.purge_files(int(clock.now) - 50) == 1
    assert not old.path.exists()
    with pytest.raises(NotFound):
        await store.get_file(old.id, "key:a")
    assert await store.list_files("key:a", None, 10, None) == []
    assert (await store.get_file(new.id, "key:b")).path.exists()
    assert await store.purge_files(int(clock.now) - 50) == 0
