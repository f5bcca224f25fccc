"""``glimpse batch --remote`` against the real Batch API in-process (fake engine): a folder goes up
as one job, the answers come back into the results file, a rerun submits nothing."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import httpx
from asgi_lifespan import LifespanManager
from rich.console import Console
from tests.fakes import FakeEngine
from tests.images import png_bytes
from tests.integration.batch_client import FAST

from glimpse.api.app import create_app
from glimpse.client.batch import BatchStats, collect_items, register_batch
from glimpse.client.batch_remote import remote_batch
from glimpse.config import GuardSettings, Settings


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="glimpse")
    register_batch(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["batch", *argv])


async def _run(app, args: argparse.Namespace) -> BatchStats:
    items = collect_items(args)
    stats = BatchStats(total=len(items))

    async def poll_soon(_: float) -> None:
        await asyncio.sleep(0.02)

    transport = httpx.ASGITransport(app=app)
    await remote_batch(args, items, stats, Console(quiet=True), transport=transport, sleep=poll_soon)
    return stats


async def test_a_folder_runs_as_one_batch_job_and_a_rerun_submits_nothing(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        (folder / f"ok{i}.png").write_bytes(png_bytes((40 + i, 30), (10 * i, 20, 30)))
    (folder / "broken.png").write_bytes(b"not an image at all")
    out = tmp_path / "out.jsonl"
    settings = Settings(
        batch=FAST.model_copy(update={"dir": tmp_path / "batches"}),
        guard=GuardSettings(audit_log_path=tmp_path / "audit.sqlite3"),
    )
    engine = FakeEngine()
    app = create_app(settings, engine=engine)
    argv = (
        str(folder),
        "--question",
        "What colour?",
        "--out",
        str(out),
        "--remote",
        "--url",
        "http://127.0.0.1",
    )
    async with LifespanManager(app) as manager:
        stats = await _run(manager.app, _args(*argv))
        again = await _run(manager.app, _args(*argv))
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            jobs = (await client.get("/v1/batches")).json()
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    records = {Path(line["image"]).name: line for line in lines}
    assert (stats.done, stats.failed) == (3, 1)
    assert stats.batch_id is not None
    for i in range(3):
        assert records[f"ok{i}.png"]["response"] == "hello world"
        assert records[f"ok{i}.png"]["status"] == 200
        assert records[f"ok{i}.png"]["question"] == "What colour?"
    assert records["broken.png"]["status"] == 415  # not an image: the live route's answer
    assert "response" not in records["broken.png"]
    assert len(engine.requests) == 3
    # The rerun resubmits only the failure: the three answers are kept, not asked again.
    assert again.skipped == 3
    assert len(jobs["data"]) == 2
    assert len(engine.requests) == 3
