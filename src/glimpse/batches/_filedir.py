"""File contents in the batch directory, written so a reader never sees half a file.

Each file is written to a private temporary name, synced, then renamed into place: an
upload cut off or refused leaves nothing, and two replicas writing the same result file
on a shared volume at once each replace it whole with the same bytes.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from glimpse.errors import RequestTooLarge

__all__ = ["FileDir"]

_COPY_CHUNK = 1 << 20


class FileDir:
    """``<directory>/<file id>.jsonl`` for every stored file."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def create(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)

    def path(self, file_id: str) -> Path:
        return self.directory / f"{file_id}.jsonl"

    def _temporary(self, file_id: str) -> Path:
        return self.directory / f"{file_id}.{secrets.token_hex(4)}.part"

    def write_upload(self, file_id: str, content: BinaryIO, max_bytes: int | None) -> int:
        """Copy an upload in and return its size; ``RequestTooLarge`` (nothing kept) past ``max_bytes``."""
        temporary, size = self._temporary(file_id), 0
        try:
            with temporary.open("wb") as out:
                while chunk := content.read(_COPY_CHUNK):
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        raise RequestTooLarge(f"The file is larger than {max_bytes} bytes.")
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            temporary.replace(self.path(file_id))
        finally:
            temporary.unlink(missing_ok=True)
        return size

    def write_lines(self, file_id: str, lines: Iterable[str]) -> int:
        """Write one JSON line per item and return the file's size."""
        temporary = self._temporary(file_id)
        try:
            with temporary.open("w", encoding="utf-8") as out:
                out.writelines(f"{line}\n" for line in lines)
                out.flush()
                os.fsync(out.fileno())
            temporary.replace(self.path(file_id))
        finally:
            temporary.unlink(missing_ok=True)
        return self.path(file_id).stat().st_size

    def remove(self, file_id: str) -> None:
        self.path(file_id).unlink(missing_ok=True)
