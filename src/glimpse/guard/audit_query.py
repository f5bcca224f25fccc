"""Reading the SQLite audit store: filters, the newest records, and records since an id.

Opened read-only, so ``glimpse audit`` can never change or lock out the server's
store; WAL mode lets it read while the server writes. Rows come back in the
shape ``AuditRecord.to_json`` writes to the JSON-lines store, plus their ``id``.
"""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from glimpse.errors import InvalidRequest
from glimpse.guard.audit_store import ADDED_COLUMNS, AUDIT_COLUMNS, JSON_COLUMNS

__all__ = ["AuditFilter", "AuditReader", "parse_time"]

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_SELECT = f"SELECT id, ts, {', '.join(AUDIT_COLUMNS)} FROM audit"  # noqa: S608 (fixed column names)


def parse_time(value: str, now: float) -> float:
    """Epoch seconds from ISO 8601 (naive means UTC) or an age such as ``90s``, ``15m``, ``1h``, ``2d``."""
    match = _RELATIVE.match(value)
    if match:
        return now - float(match.group(1)) * _UNIT_S[match.group(2)]
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise InvalidRequest(
            f"cannot read time {value!r}: use ISO 8601 (2025-01-31T12:00:00Z) or an age like 1h or 2d"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@dataclass(slots=True, frozen=True)
class AuditFilter:
    client_id: str | None = None
    since: float | None = None
    until: float | None = None
    route: str | None = None
    status: int | None = None
    flagged: bool = False
    request_id: str | None = None
    limit: int = 100

    def where(self) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        for clause, value in (
            ("client_id = ?", self.client_id),
            ("ts >= ?", self.since),
            ("ts < ?", self.until),
            ("route = ?", self.route),
            ("status = ?", self.status),
            ("request_id = ?", self.request_id),
        ):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        if self.flagged:
            clauses.append("guard_flagged = 1")
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _to_dict(row: sqlite3.Row) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": row["id"],
        "ts": datetime.fromtimestamp(row["ts"], UTC).isoformat(timespec="milliseconds"),
    }
    for column in AUDIT_COLUMNS:
        value = row[column]
        if column in JSON_COLUMNS:
            value = json.loads(value)
        elif column == "guard_flagged":
            value = bool(value)
        data[column] = value
    return data


class AuditReader:
    """A read-only view of one SQLite audit store."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise InvalidRequest(
                f"no audit database at {path} (is audit_store 'sqlite' and has the server written to it?)"
            )
        self.path = path
        self._conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
        self._conn.row_factory = sqlite3.Row
        self._select = _SELECT
        try:  # a store no newer server has opened yet lacks the added columns: read them as NULL
            present = {row[1] for row in self._conn.execute("PRAGMA table_info(audit)")}
        except sqlite3.Error:
            present = set(AUDIT_COLUMNS)
        missing = [column for column in ADDED_COLUMNS if column not in present]
        if missing:
            columns = [f"NULL AS {c}" if c in missing else c for c in AUDIT_COLUMNS]
            self._select = f"SELECT id, ts, {', '.join(columns)} FROM audit"  # noqa: S608 (fixed names)

    def _rows(self, sql: str, params: list[Any]) -> list[dict[str, Any]]:
        try:
            return [_to_dict(row) for row in self._conn.execute(sql, params)]
        except sqlite3.Error as exc:
            raise InvalidRequest(f"cannot read the audit database {self.path}: {exc}") from exc

    def query(self, flt: AuditFilter) -> list[dict[str, Any]]:
        """The newest ``flt.limit`` matching records, oldest first."""
        where, params = flt.where()
        rows = self._rows(f"{self._select}{where} ORDER BY id DESC LIMIT ?", [*params, flt.limit])
        rows.reverse()
        return rows

    def tail(self, count: int) -> list[dict[str, Any]]:
        return self.query(AuditFilter(limit=count))

    def after(self, last_id: int, limit: int = 1000) -> list[dict[str, Any]]:
        """Records written after ``last_id``, oldest first (for ``--follow``)."""
        return self._rows(f"{self._select} WHERE id > ? ORDER BY id LIMIT ?", [last_id, limit])

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> AuditReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
