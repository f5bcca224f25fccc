"""``SqliteBatchStore``: files, ownership, the line queue's leases, exactly-once output, crash recovery."""

from __future__ import annotations

import io
import json

import pytest

from glimpse.batches import BatchStatus, LineOutcome, NewBatch, SqliteBatchStore, error_line, response_line
from glimpse.errors import NotFound, RateLimited, RequestTooLarge

LEASE = 30.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(tmp_path, clock):
    store = SqliteBatchStore(tmp_path, clock=clock)
    await store.open()
    yield store
    await store.close()


def _batch(owner: str = "key:a", count: int = 3, refused: int = 0) -> NewBatch:
    lines = [
        (i, f"req-{i}", json.dumps({"messages": [{"role": "user", "content": str(i)}]})) for i in range(count)
    ]
    bad = {
        count + i: (f"bad-{i}", LineOutcome(error_line(f"bad-{i}", "invalid_json", "nope"), True))
        for i in range(refused)
    }
    return NewBatch(owner, "null", "file-x", "/v1/chat/completions", "24h", {"k": "v"}, lines, bad)


def _ok(custom_id: str) -> LineOutcome:
    return LineOutcome(response_line(custom_id, f"batch_req_{custom_id}", 200, {"answer": custom_id}), False)


def _custom_ids(path) -> list[str]:
    return [json.loads(line)["custom_id"] for line in path.read_text().splitlines()]


async def _output(store: SqliteBatchStore, batch_id: str, owner: str = "key:a"):
    batch = await store.get_batch(batch_id, owner)
    out = None if batch.output_file_id is None else await store.get_file(batch.output_file_id, owner)
    err = None if batch.error_file_id is None else await store.get_file(batch.error_file_id, owner)
    return batch, out, err


async def test_files_are_stored_listed_and_deleted_per_owner(store, tmp_path):
    first = await store.add_file("key:a", "a.jsonl", "batch", io.BytesIO(b'{"x": 1}\n'))
    second = await store.add_file("key:a", "b.jsonl", "batch", io.BytesIO(b"{}\n"))
    await store.add_file("key:b", "c.jsonl", "batch", io.BytesIO(b"{}\n"))
    assert first.bytes == 9
    assert first.path.read_bytes() == b'{"x": 1}\n'
    assert [f.id for f in await store.list_files("key:a", None, 10, None)] == [second.id, first.id]
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
    batch = await store.create_batch(_batch(count=3, refused=1), max_active=5)
    assert (batch.status, batch.total, batch.failed) == (BatchStatus.IN_PROGRESS, 4, 1)
    claimed = await store.claim("w1", 10, LEASE)
    assert [line.custom_id for line in claimed] == ["req-0", "req-1", "req-2"]
    assert await store.claim("w2", 10, LEASE) == []  # all held
    assert await store.finalize_ready() == []  # lines still running
    for line in claimed:
        assert await store.complete("w1", line, _ok(line.custom_id))
    assert not await store.complete("w1", claimed[0], _ok("again"))  # done already: not answered twice
    assert await store.finalize_ready() == [batch.id]
    done, out, err = await _output(store, batch.id)
    assert done.status is BatchStatus.COMPLETED
    assert (done.completed, done.failed) == (3, 1)
    assert _custom_ids(out.path) == ["req-0", "req-1", "req-2"]
    assert _custom_ids(err.path) == ["bad-0"]
    assert out.purpose == "batch_output"


async def test_a_crashed_workers_lines_are_queued_again_after_the_visibility_timeout(tmp_path, clock):
    first = SqliteBatchStore(tmp_path, clock=clock)
    await first.open()
    batch = await first.create_batch(_batch(count=4), max_active=5)
    held = await first.claim("dead", 2, LEASE)
    assert await first.complete("dead", held[0], _ok(held[0].custom_id))
    await first.close()  # the process dies holding held[1]: no release

    restarted = SqliteBatchStore(tmp_path, clock=clock)
    await restarted.open()
    assert await restarted.requeue_expired() == 0  # its claim has not lapsed yet
    fresh = await restarted.claim("new", 10, LEASE)
    assert [line.custom_id for line in fresh] == ["req-2", "req-3"]
    for line in fresh:
        assert await restarted.complete("new", line, _ok(line.custom_id))
    assert await restarted.finalize_ready() == []  # req-1 is still claimed by the dead worker
    clock.now += LEASE + 1
    assert await restarted.requeue_expired() == 1
    (retaken,) = await restarted.claim("new", 10, LEASE)
    assert retaken.custom_id == "req-1"
    assert not await restarted.complete("dead", held[1], _ok("late"))  # the dead worker's late answer
    assert await restarted.complete("new", retaken, _ok(retaken.custom_id))
    assert await restarted.finalize_ready() == [batch.id]
    done, out, _ = await _output(restarted, batch.id)
    assert sorted(_custom_ids(out.path)) == ["req-0", "req-1", "req-2", "req-3"]
    assert (done.completed, done.failed) == (4, 0)
    await restarted.close()


async def test_an_expired_claim_can_be_taken_without_a_restart(store, clock):
    await store.create_batch(_batch(count=1), max_active=5)
    (line,) = await store.claim("w1", 1, LEASE)
    clock.now += LEASE / 2
    await store.renew("w1", [line], LEASE)
    clock.now += LEASE * 0.9
    assert await store.claim("w2", 1, LEASE) == []  # renewed: still w1's
    clock.now += LEASE
    (stolen,) = await store.claim("w2", 1, LEASE)
    assert stolen.custom_id == line.custom_id
    assert not await store.complete("w1", line, _ok("w1"))
    assert await store.complete("w2", stolen, _ok("w2"))


async def test_released_lines_go_back_to_the_queue(store):
    await store.create_batch(_batch(count=2), max_active=5)
    lines = await store.claim("w1", 2, LEASE)
    await store.release("w1", lines)
    assert [line.custom_id for line in await store.claim("w2", 5, LEASE)] == ["req-0", "req-1"]


async def test_a_cancelled_batch_stops_handing_out_lines_and_keeps_what_was_answered(store):
    batch = await store.create_batch(_batch(count=3), max_active=5)
    (line,) = await store.claim("w1", 1, LEASE)
    cancelling = await store.cancel_batch(batch.id, "key:a")
    assert cancelling.status is BatchStatus.CANCELLING
    assert await store.claim("w1", 5, LEASE) == []
    assert await store.finalize_ready() == []  # one line is still running
    await store.complete("w1", line, _ok(line.custom_id))
    assert await store.finalize_ready() == [batch.id]
    done, out, err = await _output(store, batch.id)
    assert done.status is BatchStatus.CANCELLED
    assert done.cancelled_at is not None
    assert _custom_ids(out.path) == ["req-0"]
    assert err is None
    with pytest.raises(NotFound):
        await store.cancel_batch(batch.id, "key:b")


async def test_finalizing_again_after_a_crash_writes_the_same_files(store):
    batch = await store.create_batch(_batch(count=1), max_active=5)
    (line,) = await store.claim("w1", 1, LEASE)
    await store.complete("w1", line, _ok(line.custom_id))
    assert store._ready_to_finalize() == [batch.id]  # the process dies here, in 'finalizing'
    assert (await store.get_batch(batch.id, "key:a")).status is BatchStatus.FINALIZING
    assert await store.finalize_ready() == [batch.id]
    done, out, _ = await _output(store, batch.id)
    assert done.status is BatchStatus.COMPLETED
    assert _custom_ids(out.path) == ["req-0"]


async def test_active_batches_per_owner_are_limited(store):
    await store.create_batch(_batch(), max_active=2)
    await store.create_batch(_batch(), max_active=2)
    with pytest.raises(RateLimited):
        await store.create_batch(_batch(), max_active=2)
    await store.create_batch(_batch(owner="key:b"), max_active=2)  # another owner's count


async def test_batches_are_listed_newest_first_per_owner(store):
    ids = [(await store.create_batch(_batch(), max_active=9)).id for _ in range(3)]
    await store.create_batch(_batch(owner="key:b"), max_active=9)
    assert [b.id for b in await store.list_batches("key:a", 2, None)] == ids[::-1][:2]
    assert [b.id for b in await store.list_batches("key:a", 5, ids[1])] == [ids[0]]
    with pytest.raises(NotFound):
        await store.get_batch(ids[0], "key:b")
    assert (await store.get_batch(ids[0], "key:a")).metadata == {"k": "v"}
