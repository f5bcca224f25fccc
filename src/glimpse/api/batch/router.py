"""``/v1/files`` and ``/v1/batches``: OpenAI's Files and Batch APIs over the batch store.

Every object belongs to the caller that made it (``adapter.owner_of``); another key's
file or batch answers 404, as if it did not exist. The lines themselves are run by
``api.batch.runner``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from fastapi.responses import FileResponse

from glimpse.api.context import ContextDep
from glimpse.api.errors import error_responses
from glimpse.api.security import authorize
from glimpse.api.state import StateDep
from glimpse.batches import BatchStore, NewBatch, parse_input
from glimpse.errors import InvalidRequest, NotFound

from .adapter import CHAT_ENDPOINT, COMPLETION_WINDOWS, body_check, owner_of, principal_to_json
from .schemas import BatchCreateRequest, BatchList, BatchObject, FileDeleted, FileList, FileObject

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["batch"], dependencies=[Depends(authorize)])


def _store(state: StateDep) -> BatchStore:
    if state.batch_store is None:
        raise NotFound("The Batch API is off on this server (GLIMPSE_BATCH__ENABLED).")
    return state.batch_store


StoreDep = Annotated[BatchStore, Depends(_store)]


def _page(data: Sequence[FileObject] | Sequence[BatchObject], *, has_more: bool) -> dict[str, Any]:
    """OpenAI's list cursor fields: whether more follow, and the first and last ids of this page."""
    return {
        "has_more": has_more,
        "first_id": data[0].id if data else None,
        "last_id": data[-1].id if data else None,
    }


@router.post("/files", responses=error_responses(400, 401, 403, 413, 422))
async def upload_file(
    store: StoreDep,
    state: StateDep,
    context: ContextDep,
    file: Annotated[UploadFile, File()],
    purpose: Annotated[str, Form()],
) -> FileObject:
    if purpose != "batch":
        raise InvalidRequest(f"Only purpose 'batch' is accepted here, not {purpose!r}.", param="purpose")
    record = await store.add_file(
        owner_of(context.principal),
        file.filename or "upload.jsonl",
        purpose,
        file.file,
        state.settings.batch.max_file_bytes,
    )
    return FileObject.of(record, state.settings.batch.file_retention_s)


@router.get("/files", responses=error_responses(401, 403))
async def list_files(
    store: StoreDep,
    state: StateDep,
    context: ContextDep,
    purpose: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    after: str | None = None,
) -> FileList:
    records = await store.list_files(owner_of(context.principal), purpose, limit + 1, after)
    data = [FileObject.of(r, state.settings.batch.file_retention_s) for r in records[:limit]]
    return FileList(data=data, **_page(data, has_more=len(records) > limit))


@router.get("/files/{file_id}", responses=error_responses(401, 403, 404))
async def get_file(file_id: str, store: StoreDep, state: StateDep, context: ContextDep) -> FileObject:
    record = await store.get_file(file_id, owner_of(context.principal))
    return FileObject.of(record, state.settings.batch.file_retention_s)


@router.get("/files/{file_id}/content", response_class=FileResponse, responses=error_responses(401, 403, 404))
async def file_content(file_id: str, store: StoreDep, context: ContextDep) -> FileResponse:
    record = await store.get_file(file_id, owner_of(context.principal))
    if not await anyio.Path(record.path).is_file():  # deleted meanwhile, or the volume lost it
        raise NotFound(f"The content of file {file_id!r} is gone.", param="file_id")
    return FileResponse(record.path, media_type="application/jsonl", filename=record.filename)


@router.delete("/files/{file_id}", responses=error_responses(401, 403, 404))
async def delete_file(file_id: str, store: StoreDep, context: ContextDep) -> FileDeleted:
    await store.delete_file(file_id, owner_of(context.principal))
    return FileDeleted(id=file_id)


@router.post("/batches", responses=error_responses(400, 401, 403, 404, 422, 429))
async def create_batch(
    body: BatchCreateRequest, store: StoreDep, state: StateDep, context: ContextDep
) -> BatchObject:
    """Validate the whole input file now (400 if no line can run), queue its lines, answer at once."""
    if body.endpoint != CHAT_ENDPOINT:
        raise InvalidRequest(
            f"Only the endpoint {CHAT_ENDPOINT!r} is served, not {body.endpoint!r}.", param="endpoint"
        )
    window_s = COMPLETION_WINDOWS.get(body.completion_window)
    if window_s is None:
        raise InvalidRequest(
            f"completion_window must be one of {sorted(COMPLETION_WINDOWS)}.", param="completion_window"
        )
    owner = owner_of(context.principal)
    source = await store.get_file(body.input_file_id, owner)
    if source.purpose != "batch":
        raise InvalidRequest(
            f"The file {source.id!r} has purpose {source.purpose!r}; a batch reads a 'batch' file.",
            param="input_file_id",
        )
    settings = state.settings.batch
    parsed = await anyio.to_thread.run_sync(
        parse_input, source.path, CHAT_ENDPOINT, settings.max_lines_per_batch, body_check(state)
    )
    record = await store.create_batch(
        NewBatch(
            owner=owner,
            principal=principal_to_json(context.principal),
            input_file_id=source.id,
            endpoint=CHAT_ENDPOINT,
            completion_window=body.completion_window,
            window_s=window_s,
            metadata=body.metadata,
            lines=parsed.lines,
            refused=parsed.refused,
        ),
        settings.max_active_batches_per_key,
    )
    state.wake_batch_worker()
    return BatchObject.of(record)


@router.get("/batches", responses=error_responses(401, 403))
async def list_batches(
    store: StoreDep,
    context: ContextDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: str | None = None,
) -> BatchList:
    records = await store.list_batches(owner_of(context.principal), limit + 1, after)
    data = [BatchObject.of(r) for r in records[:limit]]
    return BatchList(data=data, **_page(data, has_more=len(records) > limit))


@router.get("/batches/{batch_id}", responses=error_responses(401, 403, 404))
async def get_batch(batch_id: str, store: StoreDep, context: ContextDep) -> BatchObject:
    return BatchObject.of(await store.get_batch(batch_id, owner_of(context.principal)))


@router.post("/batches/{batch_id}/cancel", responses=error_responses(401, 403, 404))
async def cancel_batch(batch_id: str, store: StoreDep, state: StateDep, context: ContextDep) -> BatchObject:
    record = await store.cancel_batch(batch_id, owner_of(context.principal))
    state.wake_batch_worker()
    return BatchObject.of(record)
