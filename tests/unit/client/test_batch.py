import argparse
import asyncio
import base64
import io
import json
import random
import signal
import threading
from collections import Counter

import httpx
import pytest
from rich.console import Console

from glimpse.client._http import RetryPolicy
from glimpse.client.batch import (
    BatchStats,
    _print_summary,
    batch,
    collect_items,
    infer_item,
    register_batch,
    run_batch,
    run_items,
)
from glimpse.client.batch_io import BatchItem, ResultsFile, read_results


class FakeInfer:
    """``POST /infer``: answers with the image's bytes; ``plan`` scripts statuses per image."""

    def __init__(self, plan=None, retry_after="2"):
        self.plan = {k: list(v) for k, v in (plan or {}).items()}
        self.retry_after = retry_after
        self.calls = Counter()

    def handler(self, request):
        assert request.url.path == "/infer"
        body = json.loads(request.content)
        name = base64.b64decode(body["image"]).decode()
        self.calls[name] += 1
        script = self.plan.get(name)
        step = script.pop(0) if script else 200
        if step == "connect":
            raise httpx.ConnectError("refused", request=request)
        if step != 200:
            headers = {"Retry-After": self.retry_after} if step in (429, 503) else {}
            return httpx.Response(step, headers=headers, json={"error": {"message": f"nope {step}"}})
        return httpx.Response(200, json={"response": f"{name}: {body['text']} ({body['max_new_tokens']})"})

    def transport(self):
        return httpx.MockTransport(self.handler)


def images(tmp_path, names):
    folder = tmp_path / "imgs"
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / name).write_bytes(name.encode())  # the content is the name: the fake echoes it
    return folder


def parse(*argv):
    parser = argparse.ArgumentParser(prog="glimpse")
    register_batch(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["batch", *argv])


async def infer(server, item, attempts=5):
    sleeps = []

    async def sleep(seconds):
        sleeps.append(seconds)

    async with httpx.AsyncClient(transport=server.transport(), base_url="http://fake") as client:
        record = await infer_item(
            client,
            item,
            max_tokens=9,
            policy=RetryPolicy(attempts=attempts),
            rng=random.Random(0),
            sleep=sleep,
        )
    return record, sleeps


async def test_retries_429_and_503_honouring_retry_after(tmp_path):
    folder = images(tmp_path, ["a.png"])
    server = FakeInfer({"a.png": [429, 503, 200]}, retry_after="2")
    record, sleeps = await infer(server, BatchItem(str(folder / "a.png"), "What?"))
    assert record["response"] == "a.png: What? (9)"
    assert (record["status"], record["attempts"]) == (200, 3)
    assert len(sleeps) == 2
    assert all(2.0 <= s <= 2.5 for s in sleeps)


async def test_connection_errors_are_retried_and_attempts_are_bounded(tmp_path):
    folder = images(tmp_path, ["a.png", "b.png"])
    server = FakeInfer({"a.png": ["connect", 200], "b.png": [503] * 10})
    record, _ = await infer(server, BatchItem(str(folder / "a.png"), "Q"))
    assert record["status"] == 200
    assert record["attempts"] == 2
    record, sleeps = await infer(server, BatchItem(str(folder / "b.png"), "Q"), attempts=3)
    assert (record["status"], record["error"], record["attempts"]) == (503, "503: nope 503", 3)
    assert server.calls["b.png"] == 3
    assert len(sleeps) == 2


async def test_client_errors_are_not_retried_and_unreadable_images_fail(tmp_path):
    folder = images(tmp_path, ["a.png"])
    server = FakeInfer({"a.png": [400]})
    record, sleeps = await infer(server, BatchItem(str(folder / "a.png"), "Q"))
    assert (record["status"], record["attempts"], sleeps) == (400, 1, [])
    record, _ = await infer(server, BatchItem(str(folder / "missing.png"), "Q"))
    assert record["status"] is None
    assert record["error"].startswith("unreadable image")


def test_items_need_exactly_one_source_and_a_question(tmp_path):
    folder = images(tmp_path, ["a.png"])
    with pytest.raises(ValueError, match="either"):
        collect_items(parse("--out", "o.jsonl", "--question", "Q"))
    with pytest.raises(ValueError, match="--question is required"):
        collect_items(parse(str(folder), "--out", "o.jsonl"))
    listed = tmp_path / "l.jsonl"
    listed.write_text('{"image": "imgs/a.png", "question": "Q"}\n{"image": "imgs/a.png", "question": "Q"}\n')
    assert len(collect_items(parse("--list", str(listed), "--out", "o.jsonl"))) == 1  # duplicates collapse


async def test_rerun_retries_failures_and_never_repeats_successes(tmp_path):
    names = [f"{i:02d}.jpg" for i in range(12)]
    folder = images(tmp_path, names)
    out = tmp_path / "r.jsonl"
    args = parse(
        str(folder), "--question", "Q", "--out", str(out), "--concurrency", "3", "--max-attempts", "1"
    )
    items = collect_items(args)
    quiet = Console(file=io.StringIO())

    server = FakeInfer({"03.jpg": [503], "07.jpg": [500]})
    first = BatchStats(total=len(items))
    await batch(args, items, first, quiet, transport=server.transport())
    assert (first.done, first.failed, first.skipped) == (10, 2, 0)
    assert sum(first.reasons.values()) == 2

    second = BatchStats(total=len(items))
    await batch(args, items, second, quiet, transport=server.transport())
    assert (second.done, second.failed, second.skipped) == (2, 0, 10)
    assert server.calls == Counter({n: 2 if n in ("03.jpg", "07.jpg") else 1 for n in names})

    records = [json.loads(x) for x in out.read_text().splitlines()]
    successes = [r["image"] for r in records if r["status"] == 200]
    assert sorted(successes) == sorted(str(folder / n) for n in names)  # each exactly once
    assert all(r["latency_s"] >= 0 and r["question"] == "Q" for r in records)


def test_run_batch_exit_codes(tmp_path, monkeypatch):
    folder = images(tmp_path, ["a.png", "b.png"])
    server = FakeInfer({"b.png": [400]})
    real = httpx.AsyncClient.__init__

    def with_fake_transport(self, *a, **kw):
        kw["transport"] = server.transport()
        real(self, *a, **kw)

    monkeypatch.setattr(httpx.AsyncClient, "__init__", with_fake_transport)
    argv = (str(folder), "--question", "Q", "--out", str(tmp_path / "r.jsonl"))
    assert run_batch(parse(*argv)) == 1  # b.png got a 400
    assert run_batch(parse(*argv)) == 0  # the rerun only retries b.png, which now succeeds
    assert server.calls == Counter({"a.png": 1, "b.png": 2})
    assert run_batch(parse(str(tmp_path / "nowhere"), "--question", "Q", "--out", "x.jsonl")) == 2


async def test_cancelling_mid_write_leaves_whole_lines(tmp_path):
    folder = images(tmp_path, ["a.png", "b.png"])
    out = tmp_path / "r.jsonl"
    writing = threading.Event()
    release = threading.Event()

    class SlowResults(ResultsFile):
        def append(self, record):
            writing.set()
            release.wait(5)  # the write is still going when the cancel arrives
            super().append(record)

    results = SlowResults(out, read_results(out))
    items = [BatchItem(str(folder / "a.png"), "Q")]
    async with httpx.AsyncClient(transport=FakeInfer().transport(), base_url="http://fake") as client:
        task = asyncio.create_task(
            run_items(client, items, results, BatchStats(), concurrency=1, max_tokens=4, policy=RetryPolicy())
        )
        await asyncio.to_thread(writing.wait, 5)
        task.cancel()
        await asyncio.sleep(0.05)
        assert not task.done()  # still waiting for the line to land
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
    results.close()
    assert read_results(out).done == {(str(folder / "a.png"), "Q")}


def test_out_must_be_a_file_in_an_existing_folder(tmp_path):
    folder = images(tmp_path, ["a.png"])
    for out in (tmp_path / "missing_dir" / "r.jsonl", folder):
        with pytest.raises(SystemExit) as exited:
            parse(str(folder), "--question", "Q", "--out", str(out))
        assert exited.value.code == 2


def test_an_unopenable_results_file_is_a_clean_error(tmp_path, monkeypatch, capsys):
    def refuse(path, state):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("glimpse.client.batch.ResultsFile", refuse)
    folder = images(tmp_path, ["a.png"])
    assert run_batch(parse(str(folder), "--question", "Q", "--out", str(tmp_path / "r.jsonl"))) == 2
    assert "Permission denied" in capsys.readouterr().err


def test_messages_with_brackets_are_printed_verbatim(tmp_path, capsys):
    missing = tmp_path / "photos[/old]"
    assert run_batch(parse(str(missing), "--question", "Q", "--out", str(tmp_path / "r.jsonl"))) == 2
    assert "photos[/old]" in capsys.readouterr().err.replace("\n", "")
    stats = BatchStats(total=1, failed=1, reasons=Counter({"unreadable image: [Errno 2] 'a[/b]' [bold]": 1}))
    console = Console(record=True, width=200)
    _print_summary(stats, tmp_path / "r[/x].jsonl", console)
    text = console.export_text()
    assert "r[/x].jsonl" in text
    assert "'a[/b]' [bold]" in text


async def test_torn_line_warning_names_a_bracketed_path_verbatim(tmp_path):
    folder = images(tmp_path, ["a.png"])
    (tmp_path / "runs[").mkdir()
    out = tmp_path / "runs[" / "old].jsonl"  # the path reads .../runs[/old].jsonl
    out.write_text('{"image": "/x", "qu')  # torn: no newline
    args = parse(str(folder), "--question", "Q", "--out", str(out))
    console = Console(record=True, width=400)
    await batch(args, collect_items(args), BatchStats(), console, transport=FakeInfer().transport())
    assert "runs[/old].jsonl: dropped a torn last line" in console.export_text()


async def test_workers_take_no_new_item_once_a_signal_has_stopped_the_run(tmp_path):
    # the flag works even if the cancellation that comes with it is lost
    names = [f"{i}.png" for i in range(6)]
    folder = images(tmp_path, names)
    out = tmp_path / "r.jsonl"
    results = ResultsFile(out, read_results(out))
    stats = BatchStats(total=len(names))

    def stop_after_two(_record):
        if stats.done == 2:
            stats.interrupted_by = signal.SIGINT

    items = [BatchItem(str(folder / name), "Q") for name in names]
    async with httpx.AsyncClient(transport=FakeInfer().transport(), base_url="http://fake") as client:
        await run_items(
            client,
            items,
            results,
            stats,
            concurrency=1,
            max_tokens=4,
            policy=RetryPolicy(),
            on_record=stop_after_two,
        )
    results.close()
    assert len(read_results(out).done) == 2
