"""Wire shapes of OpenAI's Files and Batches APIs (the subset served: purpose ``batch``, chat completions)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from glimpse.batches import BatchRecord, FileRecord

__all__ = [
    "BatchCreateRequest",
    "BatchList",
    "BatchObject",
    "FileDeleted",
    "FileList",
    "FileObject",
    "RequestCounts",
]

#: OpenAI's metadata: at most 16 pairs, keys up to 64 characters, values up to 512.
Metadata = dict[
    Annotated[str, StringConstraints(max_length=64)], Annotated[str, StringConstraints(max_length=512)]
]


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["processed"] = "processed"
    expires_at: int | None = None
    status_details: str | None = None

    @classmethod
    def of(cls, record: FileRecord, retention_s: int) -> FileObject:
        """``expires_at``: when the retention sweep deletes the file."""
        return cls(
            id=record.id,
            bytes=record.bytes,
            created_at=record.created_at,
            filename=record.filename,
            purpose=record.purpose,
            expires_at=record.created_at + retention_s,
        )


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class BatchCreateRequest(BaseModel):
    # The SDK may send fields this server does not use (output_expires_after): accepted, ignored.
    model_config = ConfigDict(extra="ignore")

    input_file_id: str = Field(max_length=128)
    endpoint: str = Field(max_length=128, description="Only /v1/chat/completions is served.")
    completion_window: str = Field(max_length=16, description="Only 24h.")
    metadata: Metadata | None = Field(None, max_length=16)


class RequestCounts(BaseModel):
    total: int
    completed: int
    failed: int


class BatchObject(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: None = None
    input_file_id: str
    completion_window: str
    status: str
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    in_progress_at: int | None
    expires_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None = None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: RequestCounts
    metadata: dict[str, str] | None

    @classmethod
    def of(cls, record: BatchRecord) -> BatchObject:
        return cls(
            id=record.id,
            endpoint=record.endpoint,
            input_file_id=record.input_file_id,
            completion_window=record.completion_window,
            status=str(record.status),
            output_file_id=record.output_file_id,
            error_file_id=record.error_file_id,
            created_at=record.created_at,
            in_progress_at=record.in_progress_at,
            expires_at=record.expires_at,
            finalizing_at=record.finalizing_at,
            completed_at=record.completed_at,
            failed_at=record.failed_at,
            cancelling_at=record.cancelling_at,
            cancelled_at=record.cancelled_at,
            expired_at=record.expired_at,
            request_counts=RequestCounts(
                total=record.total, completed=record.completed, failed=record.failed
            ),
            metadata=None if record.metadata is None else dict(record.metadata),
        )


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchObject]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None
