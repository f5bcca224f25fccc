import argparse
import json
import threading
import time

import pytest

from glimpse.config import GuardSettings, Settings
from glimpse.errors import InvalidRequest
from glimpse.guard.audit import AuditLog, AuditRecord
from glimpse.guard.audit_cli import follow, register_audit
from glimpse.guard.audit_query import AuditReader


def _record(request_id, **extra):
    fields = {
        "request_id": request_id,
        "client_id": "key:ci",
        "auth_method": "api_key",
        "route": "/infer",
        "status": 200,
        "latency_ms": 4.0,
        "tokens_in": 11,
        "tokens_out": 3,
    }
    return AuditRecord.build(prompt_texts=["q"], **(fields | extra))


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "audit.sqlite3"
    audit = AuditLog(GuardSettings(audit_log_path=path))
    audit.record(_record("req-a"))
    audit.record(_record("req-b", client_id="jwt:bob", status=429))
    audit.record(_record("req-c", route="/v1/chat/completions", ts=time.time() - 7200))
    audit.close()
    return path


def _run(argv, settings=None):
    parser = argparse.ArgumentParser(prog="glimpse")
    sub = parser.add_subparsers(dest="command", required=True)
    register_audit(sub, lambda: settings or Settings())
    args = parser.parse_args(argv)
    return args.func(args)


def _json_lines(out):
    return [json.loads(line) for line in out.splitlines()]


def test_tail_json_uses_the_settings_path(store, capsys):
    settings = Settings(guard=GuardSettings(audit_log_path=store))
    assert _run(["audit", "tail", "-n", "2", "--json"], settings) == 0
    rows = _json_lines(capsys.readouterr().out)
    assert [r["request_id"] for r in rows] == ["req-b", "req-c"]
    assert rows[0]["status"] == 429


def test_query_filters_by_client_status_and_since(store, capsys):
    assert _run(["audit", "query", "--path", str(store), "--client", "jwt:bob", "--json"]) == 0
    assert [r["request_id"] for r in _json_lines(capsys.readouterr().out)] == ["req-b"]
    assert _run(["audit", "query", "--path", str(store), "--status", "200", "--since", "1h", "--json"]) == 0
    assert [r["request_id"] for r in _json_lines(capsys.readouterr().out)] == ["req-a"]


def test_table_output(store, capsys):
    assert _run(["audit", "query", "--path", str(store), "--route", "/infer"]) == 0
    out = capsys.readouterr().out
    assert "req-a" in out
    assert "jwt:bob" in out
    assert "11/3" in out
    assert "req-c" not in out


def test_no_matches_says_so(store, capsys):
    assert _run(["audit", "query", "--path", str(store), "--flagged"]) == 0
    assert "no matching audit records" in capsys.readouterr().out


def test_non_sqlite_store_is_refused_with_a_hint():
    settings = Settings(guard=GuardSettings(audit_store="jsonl"))
    with pytest.raises(InvalidRequest, match="only the SQLite store"):
        _run(["audit", "tail"], settings)


def test_bad_limit_is_a_usage_error():
    with pytest.raises(SystemExit):
        _run(["audit", "tail", "-n", "0"])


def test_follow_prints_records_as_they_arrive(store):
    seen = []
    stop = threading.Event()

    def on_rows(rows):
        seen.extend(rows)
        if len(seen) >= 2:
            stop.set()

    def write_later():
        time.sleep(0.1)
        audit = AuditLog(GuardSettings(audit_log_path=store))
        audit.record(_record("live-1"))
        audit.record(_record("live-2"))
        audit.close()

    writer = threading.Thread(target=write_later)
    give_up = threading.Timer(10, stop.set)
    with AuditReader(store) as reader:
        last = reader.tail(1)[0]["id"]
        writer.start()
        give_up.start()
        follow(reader, last, on_rows, stop, interval_s=0.02)
    give_up.cancel()
    writer.join(5)
    assert [r["request_id"] for r in seen] == ["live-1", "live-2"]
