import logging
import sqlite3
import threading
import time

from glimpse.guard.audit import AuditRecord
from glimpse.guard.audit_store import AuditWriter, SqliteAuditStore

DAY = 86_400.0
NOW = 1_750_000_000.0


class Clock:
    def __init__(self, now=NOW):
        self.now = now

    def __call__(self):
        return self.now


def _row(request_id="r", ts=NOW):
    record = AuditRecord(
        request_id=request_id,
        client_id="key:a",
        auth_method="api_key",
        route="/infer",
        status=200,
        latency_ms=3.0,
        ts=ts,
    )
    return record.ts, record.to_json()


def _ids(path):
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute("SELECT request_id FROM audit ORDER BY id")]


class GatedStore:
    """A store that holds the writer thread until the test opens the gate (a stuck disk)."""

    def __init__(self):
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.rows = []

    def write(self, rows):
        self.entered.set()
        self.gate.wait(10)
        self.rows.extend(rows)

    def close(self):
        pass


def test_full_queue_counts_drops_without_blocking_and_logs_once(caplog):
    store = GatedStore()
    reasons = []
    writer = AuditWriter(store, max_queue=3, on_failure=reasons.append)
    writer.put(*_row("first"))
    assert store.entered.wait(5)  # the writer holds "first" and is stuck in the store
    for i in range(8):
        writer.put(*_row(f"r{i}"))
    assert writer.dropped == 5
    assert reasons == ["dropped"] * 5
    assert sum("audit queue full" in r.getMessage() for r in caplog.records) == 1
    store.gate.set()
    writer.close()
    assert [p["request_id"] for _, p in store.rows] == ["first", "r0", "r1", "r2"]


def test_flush_times_out_instead_of_hanging_on_a_stuck_store():
    store = GatedStore()
    writer = AuditWriter(store, max_queue=10)
    writer.put(*_row())
    assert store.entered.wait(5)
    assert writer.flush(timeout=0.2) is False
    store.gate.set()
    assert writer.flush(timeout=5) is True
    writer.close()


class BuggyStore:
    def __init__(self):
        self.calls = 0

    def write(self, rows):
        self.calls += 1
        if self.calls == 1:
            raise KeyError("a bug, not an I/O error")

    def close(self):
        pass


def test_writer_thread_survives_any_store_error():
    store = BuggyStore()
    writer = AuditWriter(store)
    writer.put(*_row("a"))
    writer.flush()
    writer.put(*_row("b"))
    writer.close()
    assert (writer.write_failures, writer.written, store.calls) == (1, 1, 2)


def test_retention_deletes_old_rows_on_open(tmp_path):
    path = tmp_path / "audit.sqlite3"
    old = SqliteAuditStore(path, retention_days=30, clock=Clock(NOW - 40 * DAY))
    old.write([_row("ancient", NOW - 40 * DAY), _row("recent", NOW - 29 * DAY)])
    old.close()
    assert _ids(path) == ["ancient", "recent"]
    store = SqliteAuditStore(path, retention_days=30, clock=Clock(NOW))
    store.write([_row("new")])
    store.close()
    assert _ids(path) == ["recent", "new"]
    assert store.pruned == 1


def test_retention_runs_again_after_the_interval(tmp_path):
    path = tmp_path / "audit.sqlite3"
    clock = Clock(NOW)
    store = SqliteAuditStore(path, retention_days=1, clock=clock, prune_interval_s=2 * DAY)
    store.write([_row("day-0", NOW)])
    clock.now += DAY + 60  # "day-0" is now past retention, but the next prune is not due
    store.write([_row("day-1", clock.now)])
    assert _ids(path) == ["day-0", "day-1"]
    clock.now = NOW + 2 * DAY
    store.write([_row("day-1b", clock.now)])
    assert _ids(path) == ["day-1", "day-1b"]
    store.close()


def test_sqlite_store_uses_wal_so_readers_do_not_block_the_writer(tmp_path, caplog):
    path = tmp_path / "audit.sqlite3"
    caplog.set_level(logging.INFO)
    store = SqliteAuditStore(path, retention_days=30, clock=Clock())
    store.write([_row("a")])
    with sqlite3.connect(path) as reader:
        assert reader.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM audit").fetchone()
        store.write([_row("b")])  # a reader holding a snapshot does not stop writes
        reader.execute("COMMIT")
    store.close()
    assert _ids(path) == ["a", "b"]


def test_close_gives_up_on_a_stuck_store_and_counts_what_it_abandons(caplog):
    store = GatedStore()
    reasons = []
    writer = AuditWriter(store, max_queue=10, on_failure=reasons.append)
    writer.put(*_row("stuck"))
    assert store.entered.wait(5)
    writer.put(*_row("queued-1"))
    writer.put(*_row("queued-2"))
    writer.close(timeout=0.2)
    assert writer.dropped == 2
    assert reasons == ["dropped", "dropped"]
    assert any("2 queued records abandoned" in r.getMessage() for r in caplog.records)
    store.gate.set()
    deadline = time.monotonic() + 5
    while not store.rows and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [p["request_id"] for _, p in store.rows] == ["stuck"]  # the batch in hand still lands
