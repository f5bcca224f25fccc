import sqlite3
from datetime import UTC, datetime

import pytest

from glimpse.errors import InvalidRequest
from glimpse.guard.audit import AuditRecord
from glimpse.guard.audit_query import AuditFilter, AuditReader, parse_time
from glimpse.guard.audit_store import SqliteAuditStore
from glimpse.guard.prompt import GuardVerdict

NOW = 1_750_000_000.0


def _write(path, *records):
    store = SqliteAuditStore(path, retention_days=365, clock=lambda: NOW)
    store.write([(r.ts, r.to_json()) for r in records])
    store.close()


def _rec(request_id, *, client="key:a", route="/infer", status=200, age_s=0.0, flagged=False):
    return AuditRecord.build(
        prompt_texts=["question"],
        request_id=request_id,
        client_id=client,
        auth_method="api_key",
        route=route,
        status=status,
        latency_ms=5.0,
        image_sha256=("cd" * 32,),
        image_dims=((32, 16),),
        guard=GuardVerdict(flagged=flagged, rule_ids=("r1",) if flagged else ()),
        tokens_in=10,
        tokens_out=2,
        ts=NOW - age_s,
    )


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "audit.sqlite3"
    _write(
        path,
        _rec("old", age_s=3 * 86_400),
        _rec("b-1", client="key:b", age_s=7200),
        _rec("limited", status=429, age_s=1800),
        _rec("chat", route="/v1/chat/completions", age_s=600, flagged=True),
        _rec("latest", age_s=10),
    )
    return path


def _ids(rows):
    return [row["request_id"] for row in rows]


def test_tail_returns_newest_oldest_first(db):
    with AuditReader(db) as reader:
        assert _ids(reader.tail(2)) == ["chat", "latest"]
        assert _ids(reader.tail(100)) == ["old", "b-1", "limited", "chat", "latest"]


def test_rows_have_the_json_store_shape(db):
    with AuditReader(db) as reader:
        row = reader.query(AuditFilter(request_id="chat"))[0]
    assert row["ts"] == datetime.fromtimestamp(NOW - 600, UTC).isoformat(timespec="milliseconds")
    assert row["guard_flagged"] is True
    assert row["guard_rules"] == ["r1"]
    assert row["image_sha256"] == ["cd" * 32]
    assert row["image_dims"] == [[32, 16]]
    assert row["question"] is None
    assert isinstance(row["id"], int)


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        (AuditFilter(client_id="key:b"), ["b-1"]),
        (AuditFilter(since=NOW - 3600), ["limited", "chat", "latest"]),
        (AuditFilter(since=NOW - 3600, until=NOW - 60), ["limited", "chat"]),
        (AuditFilter(route="/v1/chat/completions"), ["chat"]),
        (AuditFilter(status=429), ["limited"]),
        (AuditFilter(flagged=True), ["chat"]),
        (AuditFilter(client_id="key:a", limit=2), ["chat", "latest"]),
        (AuditFilter(client_id="nobody"), []),
    ],
)
def test_filters(db, flt, expected):
    with AuditReader(db) as reader:
        assert _ids(reader.query(flt)) == expected


def test_after_returns_only_newer_rows(db):
    with AuditReader(db) as reader:
        last = reader.tail(1)[0]["id"]
        assert reader.after(last) == []
        _write(db, _rec("newer"))
        assert _ids(reader.after(last)) == ["newer"]


def test_reader_is_read_only(db):
    with AuditReader(db) as reader, pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader._conn.execute("DELETE FROM audit")


def test_missing_database_is_a_clear_error(tmp_path):
    with pytest.raises(InvalidRequest, match="no audit database"):
        AuditReader(tmp_path / "absent.sqlite3")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", NOW - 90),
        ("15m", NOW - 900),
        ("1h", NOW - 3600),
        ("2d", NOW - 2 * 86_400),
        ("1w", NOW - 7 * 86_400),
        ("1.5h", NOW - 5400),
        ("2025-01-31T12:00:00Z", datetime(2025, 1, 31, 12, tzinfo=UTC).timestamp()),
        ("2025-01-31T12:00:00", datetime(2025, 1, 31, 12, tzinfo=UTC).timestamp()),
        ("2025-01-31T14:00:00+02:00", datetime(2025, 1, 31, 12, tzinfo=UTC).timestamp()),
        ("2025-01-31", datetime(2025, 1, 31, tzinfo=UTC).timestamp()),
    ],
)
def test_parse_time(text, expected):
    assert parse_time(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "1y", "", "-1h"])
def test_parse_time_refuses_nonsense(text):
    with pytest.raises(InvalidRequest, match="cannot read time"):
        parse_time(text, NOW)
