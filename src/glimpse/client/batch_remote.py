"""``glimpse batch --remote``: the same folder (or list) handed to a server as one Batch API job.

The images go up in one JSONL file of chat requests, the server works them off in the
background (at the capacity live traffic leaves free, surviving restarts), and this
command waits with a progress bar, then writes the answers to ``--out`` in the same
shape as a local run, so reruns skip what succeeded. Interrupted while waiting, it
leaves the job running on the server and says how to collect it (``--batch-id``).
Each line's ``custom_id`` is a hash of its image and question, so the answers of a
batch map back to the images whichever run collects them.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import mimetypes
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from glimpse.client._http import RETRY_STATUSES, build_client, error_message
from glimpse.client.batch_io import BatchItem, ResultsFile, read_results

if TYPE_CHECKING:
    from glimpse.client.batch import BatchStats

__all__ = ["RemoteBatchError", "custom_id", "remote_batch"]

CHAT_PATH = "/v1/chat/completions"
#: Statuses after which a batch changes no more.
_FINAL = frozenset({"completed", "failed", "cancelled", "expired"})
Sleep = Callable[[float], Awaitable[None]]


class RemoteBatchError(Exception):
    """The server refused the job (the upload or the batch): nothing to wait for."""


def custom_id(item: BatchItem) -> str:
    return hashlib.sha256(f"{item.image}\0{item.question}".encode()).hexdigest()[:24]


def _request_line(item: BatchItem, max_tokens: int, model: str | None) -> str:
    data = base64.b64encode(Path(item.image).read_bytes()).decode("ascii")
    mime = mimetypes.guess_type(item.image)[0] or "image/jpeg"
    content = [
        {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}},
        {"type": "text", "text": item.question},
    ]
    body: dict[str, Any] = {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}
    if model:
        body["model"] = model
    return json.dumps({"custom_id": custom_id(item), "method": "POST", "url": CHAT_PATH, "body": body})


def _write_input(items: list[BatchItem], max_tokens: int, model: str | None) -> tuple[IO[bytes], list[str]]:
    """The job's JSONL in a temporary file (images inline can be large), and the images that
    could not be read."""
    out: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed by the caller after the upload
    unreadable = []
    for item in items:
        try:
            out.write(_request_line(item, max_tokens, model).encode() + b"\n")
        except OSError as exc:
            unreadable.append(f"{item.image}: {exc}")
    out.seek(0)
    return out, unreadable


async def _submit(client: httpx.AsyncClient, items: list[BatchItem], args: argparse.Namespace) -> str:
    content, unreadable = await asyncio.to_thread(_write_input, items, args.max_tokens, args.model)
    try:
        if unreadable:
            raise RemoteBatchError(f"unreadable images: {'; '.join(unreadable[:3])}")
        files = {"file": ("glimpse-batch.jsonl", content, "application/jsonl")}
        upload = await client.post("/v1/files", files=files, data={"purpose": "batch"})
    finally:
        content.close()
    if upload.status_code != 200:
        raise RemoteBatchError(f"upload refused: {error_message(upload)}")
    body = {"input_file_id": upload.json()["id"], "endpoint": CHAT_PATH, "completion_window": "24h"}
    created = await client.post("/v1/batches", json=body)
    if created.status_code != 200:
        raise RemoteBatchError(f"batch refused: {error_message(created)}")
    return str(created.json()["id"])


async def _look(client: httpx.AsyncClient, batch_id: str) -> dict[str, Any] | None:
    """The batch now, or None while the server is briefly away (network, 429, 503)."""
    try:
        response = await client.get(f"/v1/batches/{batch_id}")
    except httpx.TransportError:
        return None
    if response.status_code in RETRY_STATUSES:
        return None
    if response.status_code != 200:
        raise RemoteBatchError(f"batch {batch_id}: {error_message(response)}")
    batch: dict[str, Any] = response.json()
    return batch


async def _wait(
    client: httpx.AsyncClient, batch_id: str, console: Console, poll_s: float, sleep: Sleep
) -> dict[str, Any]:
    """Poll the batch until it is final, with a bar of its lines answered."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(batch_id, total=None)
        while True:
            batch = await _look(client, batch_id)
            if batch is not None:
                counts, status = batch["request_counts"], batch["status"]
                done = counts["completed"] + counts["failed"]
                bar.update(task, total=counts["total"], completed=done, description=f"{batch_id} {status}")
                if status in _FINAL:
                    return batch
            await sleep(poll_s)


async def _lines(client: httpx.AsyncClient, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    response = await client.get(f"/v1/files/{file_id}/content")
    if response.status_code != 200:
        raise RemoteBatchError(f"file {file_id}: {error_message(response)}")
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def _record(item: BatchItem, line: dict[str, Any], batch_id: str) -> dict[str, Any]:
    """A results-file line as a local run writes it, from one output or error line."""
    record: dict[str, Any] = {"image": item.image, "question": item.question, "batch_id": batch_id}
    response = line.get("response")
    if response is None:
        error = line.get("error") or {}
        return record | {"status": None, "error": f"{error.get('code')}: {error.get('message')}"}
    body, status = response.get("body") or {}, response.get("status_code")
    if status == 200:
        return record | {"status": 200, "response": body["choices"][0]["message"]["content"]}
    message = (body.get("error") or {}).get("message") or json.dumps(body)[:300]
    return record | {"status": status, "error": f"{status}: {message}"}


async def remote_batch(
    args: argparse.Namespace,
    items: list[BatchItem],
    stats: BatchStats,
    console: Console,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    sleep: Sleep = asyncio.sleep,
) -> None:
    """Submit what ``args.out`` lacks (or follow ``args.batch_id``), wait, write the answers."""
    state = await asyncio.to_thread(read_results, args.out)
    pending = [item for item in items if item.key not in state.done]
    stats.skipped = len(items) - len(pending)
    if not pending and args.batch_id is None:
        return
    async with build_client(
        args.url, api_key=args.api_key, max_connections=2, timeout_s=args.timeout, transport=transport
    ) as client:
        batch_id = args.batch_id or await _submit(client, pending, args)
        stats.batch_id = batch_id
        console.print(f"batch [bold]{batch_id}[/bold] submitted; waiting (Ctrl-C leaves it running)")
        batch = await _wait(client, batch_id, console, args.poll_interval, sleep)
        lines = await _lines(client, batch.get("output_file_id")) + await _lines(
            client, batch.get("error_file_id")
        )
    by_id = {custom_id(item): item for item in pending}
    results = ResultsFile(args.out, state)
    try:
        for line in lines:
            item = by_id.pop(str(line.get("custom_id")), None)
            if item is None:  # answered in an earlier run, or not one of these images
                continue
            record = _record(item, line, batch_id)
            await asyncio.to_thread(results.append, record)
            stats.count(record)
        for item in by_id.values():  # cancelled or failed before it ran
            record = {"image": item.image, "question": item.question, "status": None}
            record |= {"batch_id": batch_id, "error": f"not answered: the batch is {batch['status']}"}
            await asyncio.to_thread(results.append, record)
            stats.count(record)
    finally:
        results.close()
