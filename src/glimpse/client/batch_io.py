"""Inputs and the results file of ``glimpse batch``.

The results file is the only state: one JSON line per image, appended and
fsync-ed as each finishes. A rerun reads it back and skips what succeeded, so an
interrupted run (Ctrl-C, a crash mid-write) loses at most the line being written.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

__all__ = [
    "IMAGE_EXTENSIONS",
    "BatchItem",
    "ResultsFile",
    "discover_images",
    "load_list",
    "read_results",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp"})
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(slots=True, frozen=True)
class BatchItem:
    """One image and its question; ``image`` is absolute so reruns from elsewhere still match."""

    image: str
    question: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.image, self.question)


def discover_images(directory: Path, *, recursive: bool = False) -> list[Path]:
    """Images by extension, sorted so that every run sees them in the same order."""
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a directory")
    candidates = directory.rglob("*") if recursive else directory.iterdir()
    return sorted(p.resolve() for p in candidates if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _list_rows(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix not in {".csv", ".jsonl"}:
        raise ValueError(f"{path}: a list must be .csv or .jsonl")
    # utf-8-sig: Excel starts its CSVs with a BOM, which would otherwise be part of the first header.
    text = path.read_text(encoding="utf-8-sig")
    if suffix == ".csv":
        # newline="": a quoted field may span lines, and the csv module must see its line breaks.
        return list(csv.DictReader(io.StringIO(text, newline="")))
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object")
            rows.append(row)
    return rows


def load_list(path: Path, *, default_question: str | None) -> list[BatchItem]:
    """Rows with ``image`` and an optional ``question``; relative paths are relative to the list."""
    items = []
    for number, row in enumerate(_list_rows(path), 1):
        image = str(row.get("image") or "").strip()
        question = str(row.get("question") or "").strip() or default_question
        if not image:
            raise ValueError(f"{path}: row {number} has no image")
        if not question:
            raise ValueError(f"{path}: row {number} has no question and no --question was given")
        items.append(BatchItem(str((path.parent / image).resolve()), question))
    return items


@dataclass(slots=True, frozen=True)
class ResumeState:
    done: frozenset[tuple[str, str]]
    #: Bytes of the file that hold complete lines; anything after is a torn write.
    valid_bytes: int
    torn: bool
    failed_before: int


def _is_success(record: Any) -> bool:
    return isinstance(record, dict) and record.get("status") == 200 and "response" in record


def read_results(path: Path) -> ResumeState:
    """What earlier runs finished; a torn last line (no newline, or not JSON) is ignored."""
    if not path.exists():
        return ResumeState(frozenset(), 0, False, 0)
    data = path.read_bytes()
    done: set[tuple[str, str]] = set()
    failed = 0
    end = data.rfind(b"\n") + 1  # everything after the last newline was cut mid-write
    for number, raw in enumerate(data[:end].splitlines(), 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except ValueError:
            logger.warning("%s:%d is not JSON; ignoring it", path, number)
            continue
        if _is_success(record):
            done.add((str(record.get("image")), str(record.get("question"))))
        else:
            failed += 1
    return ResumeState(frozenset(done), end, end < len(data), failed)


def _dumps(record: dict[str, Any]) -> str:
    """One JSON line that is valid UTF-8 even for a file name that is not.

    Linux allows any bytes in a name; Python keeps the undecodable ones as lone surrogates
    (``b"\\xff"`` -> ``"\\udcff"``), which cannot be encoded as UTF-8. Written as ``\\udcff``
    escapes they load back as the same string, so :func:`read_results` still matches the key.
    """
    text = json.dumps(record, ensure_ascii=False)
    return _SURROGATE.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


class ResultsFile:
    """Append-only JSON lines, each flushed and fsync-ed before the next is written.

    Blocking; callers in async code run :meth:`append` in a thread, one at a time.
    """

    def __init__(self, path: Path, state: ResumeState) -> None:
        self.path = path
        if state.torn:
            # Cut the torn tail so the next line starts on a line of its own.
            os.truncate(path, state.valid_bytes)
        self._file: IO[bytes] = path.open("ab")

    def append(self, record: dict[str, Any]) -> None:
        self._file.write(_dumps(record).encode() + b"\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()
