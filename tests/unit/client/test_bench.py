import argparse
import base64
import io
import json
import logging

import httpx
import pytest
from PIL import Image
from rich.console import Console

from glimpse.client.bench import Plan, bench, register_bench, run_bench, run_compare
from glimpse.client.bench_report import BenchReport, render_report, save_report
from glimpse.client.bench_stats import RequestResult, summarize_level

from .fakes import FakeChat


def parse(*argv):
    parser = argparse.ArgumentParser(prog="glimpse")
    register_bench(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["bench", *argv])


def quiet():
    return Console(file=io.StringIO())


def test_argparse_wiring_and_compare_subcommand():
    args = parse("--concurrency", "1,8", "--image-size", "64,128", "--ignore-eos")
    assert args.func is run_bench
    assert (args.concurrency, args.image_size, args.ignore_eos) == ([1, 8], [64, 128], True)
    args = parse("compare", "a.json", "b.json")
    assert args.func is run_compare
    assert str(args.a) == "a.json"
    with pytest.raises(SystemExit):
        parse("--concurrency", "0")


def test_plan_pool_covers_the_largest_level():
    assert Plan.from_args(parse("--concurrency", "1,32,8")).pool_size == 32
    plan = Plan.from_args(parse("--rate", "2,4"))
    assert plan.pool_size is None
    assert [lv.label for lv in plan.levels] == ["rate=2", "rate=4"]
    assert Plan.from_args(parse("--rate", "2", "--max-concurrency", "5")).pool_size == 5
    assert Plan.from_args(parse()).num_requests == 100
    assert Plan.from_args(parse("--duration", "3")).num_requests is None


async def test_bench_sends_the_configured_requests_and_counts_them():
    server = FakeChat(tokens=3)
    args = parse(
        "--url", "http://fake", "--concurrency", "1,3", "--num-requests", "6", "--warmup", "2",
        "--image-size", "32,48", "--max-tokens", "3", "--ignore-eos", "--slo-e2e", "60",
    )  # fmt: skip
    report = await bench(args, quiet(), transport=server.transport())
    assert report.model == "tiny-glm"  # discovered from /v1/models
    assert [lv.label for lv in report.levels] == ["c=1", "c=3"]
    assert [lv.completed for lv in report.levels] == [6, 6]
    assert all(lv.total_output_tokens == 18 and lv.failed == 0 for lv in report.levels)
    assert all(lv.goodput is not None and lv.goodput > 0 for lv in report.levels)
    assert len(server.bodies) == 2 + 12  # warm-up + two levels
    assert server.max_in_flight <= 3
    body = server.bodies[0]
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert (body["model"], body["max_tokens"], body["ignore_eos"]) == ("tiny-glm", 3, True)
    assert {url[:23] for url in image_urls(server)} == {"data:image/jpeg;base64,"}
    sizes = [Image.open(io.BytesIO(image(body))).size[0] for body in server.bodies]
    assert sizes[2:] == [32, 48] * 6  # each level cycles the sizes from the first
    assert report.levels[0].tokens_from_chunks == 0
    assert not [w for w in report.warnings if "usage" in w]


def image_urls(server):
    return [b["messages"][0]["content"][0]["image_url"]["url"] for b in server.bodies]


def image(body):
    return base64.b64decode(body["messages"][0]["content"][0]["image_url"]["url"].split(",", 1)[1])


async def test_no_two_requests_of_a_run_share_an_image_unless_asked():
    argv = ["--url", "http://f", "--model", "m", "--concurrency", "1,2", "--num-requests", "4"]
    server = FakeChat(tokens=1)
    await bench(parse(*argv, "--warmup", "2", "--image-size", "32,48"), quiet(), transport=server.transport())
    assert len(server.bodies) == 2 + 4 + 4
    assert len(set(image_urls(server))) == 10  # warm-up and every level included
    server = FakeChat(tokens=1)
    args = parse(*argv, "--warmup", "2", "--image-size", "32,48", "--same-image")
    await bench(args, quiet(), transport=server.transport())
    assert len(set(image_urls(server))) == 2  # one per size, for cache tests
    assert args.same_image is True


async def test_a_server_without_usage_is_warned_about_once_and_recorded(caplog, tmp_path):
    server = FakeChat(tokens=3, send_usage=False)
    args = parse("--url", "http://f", "--model", "m", "--concurrency", "1,2", "--num-requests", "3")
    with caplog.at_level(logging.WARNING, logger="glimpse.client.bench"):
        report = await bench(args, quiet(), transport=server.transport())
    assert [lv.tokens_from_chunks for lv in report.levels] == [3, 3]
    assert all(lv.total_output_tokens == 3 * 3 for lv in report.levels)  # three one-token chunks each
    (warning,) = (w for w in report.warnings if "usage" in w)  # a busy test box may add a CPU warning
    assert "counted as content chunks" in warning
    assert [r.getMessage() for r in caplog.records].count(warning) == 1
    out = tmp_path / "r.json"
    save_report(report, out)
    saved = json.loads(out.read_text())
    assert saved["warnings"].count(warning) == 1
    assert [lv["tokens_from_chunks"] for lv in saved["levels"]] == [3, 3]
    console = Console(file=io.StringIO(), width=200)
    render_report(report, console)
    assert console.file.getvalue().count("counted as content chunks") == 1


async def test_bench_reports_errors_by_status():
    server = FakeChat(fail_with=[503, 503, 429])
    args = parse("--url", "http://fake", "--model", "m", "--num-requests", "5", "--warmup", "0")
    report = await bench(args, quiet(), transport=server.transport())
    (level,) = report.levels
    assert (level.completed, level.failed, level.errors) == (2, 3, {"429": 1, "503": 2})


async def test_bench_fails_fast_when_warmup_all_fails():
    server = FakeChat(fail_with=[500, 500])
    args = parse("--url", "http://fake", "--model", "m", "--warmup", "2")
    with pytest.raises(ValueError, match="warm-up"):
        await bench(args, quiet(), transport=server.transport())


def test_run_bench_writes_json_and_plot(tmp_path, fake_server):
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    args = parse(
        "--url", "http://fake", "--concurrency", "1,2", "--num-requests", "4", "--image-size", "16",
        "--json", str(out), "--plot", str(png),
    )  # fmt: skip
    assert run_bench(args) == 0
    report = BenchReport.from_json(json.loads(out.read_text()))
    assert [lv.completed for lv in report.levels] == [4, 4]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert run_compare(parse("compare", str(out), str(out))) == 0


async def test_open_loop_levels_run_each_rate():
    server = FakeChat(tokens=2)
    args = parse(
        "--url", "http://fake", "--model", "m", "--rate", "500,1000", "--num-requests", "10", "--warmup", "0"
    )
    report = await bench(args, quiet(), transport=server.transport())
    assert [(lv.label, lv.rate, lv.completed) for lv in report.levels] == [
        ("rate=500", 500, 10),
        ("rate=1000", 1000, 10),
    ]
    assert len(server.bodies) == 20


async def test_images_folder_is_used_instead_of_noise(tmp_path):
    (tmp_path / "x.png").write_bytes(b"not really a png")
    server = FakeChat(tokens=1)
    args = parse("--url", "http://fake", "--model", "m", "--images", str(tmp_path), "--num-requests", "3")
    await bench(args, quiet(), transport=server.transport())
    urls = {b["messages"][0]["content"][0]["image_url"]["url"] for b in server.bodies}
    assert urls == {"data:image/png;base64," + base64.b64encode(b"not really a png").decode()}


def test_concurrency_and_rate_are_exclusive():
    assert run_bench(parse("--concurrency", "2", "--rate", "1")) == 2


async def test_server_result_cache_is_bypassed_unless_allowed():
    server = FakeChat(tokens=1)
    await bench(
        parse("--url", "http://f", "--model", "m", "--num-requests", "2"),
        quiet(),
        transport=server.transport(),
    )
    assert set(server.cache_control) == {"no-cache"}
    server = FakeChat(tokens=1, cache_header=True)
    args = parse("--url", "http://f", "--model", "m", "--num-requests", "2", "--allow-cache", "--warmup", "0")
    report = await bench(args, quiet(), transport=server.transport())
    assert set(server.cache_control) == {None}
    assert report.levels[0].cache_hits == 2


def test_output_paths_are_checked_before_the_run(tmp_path):
    for flag in ("--json", "--plot"):
        with pytest.raises(SystemExit) as exited:
            parse(flag, str(tmp_path / "missing_dir" / "x"))
        assert exited.value.code == 2
        with pytest.raises(SystemExit):
            parse(flag, str(tmp_path))  # a folder, not a file
    assert parse("--json", str(tmp_path / "x.json")).json_path == tmp_path / "x.json"


@pytest.fixture
def fake_server(monkeypatch):
    """Every ``httpx.AsyncClient`` talks to a :class:`FakeChat`, so ``run_bench`` runs end to end."""
    server = FakeChat(tokens=2)
    real = httpx.AsyncClient.__init__

    def with_fake_transport(self, *a, **kw):
        kw["transport"] = server.transport()
        real(self, *a, **kw)

    monkeypatch.setattr(httpx.AsyncClient, "__init__", with_fake_transport)
    return server


def test_a_failed_final_write_is_a_clean_error_after_the_tables(tmp_path, fake_server, capsys):
    (tmp_path / "gone").mkdir()
    args = parse("--url", "http://fake", "--num-requests", "2", "--json", str(tmp_path / "gone" / "r.json"))
    (tmp_path / "gone").rmdir()  # removed while the benchmark ran
    assert run_bench(args) == 2
    captured = capsys.readouterr()
    assert "TTFT p50" in captured.out
    assert "error:" in captured.err


@pytest.mark.parametrize("same_image", [[], ["--same-image"]])
async def test_seed_changes_the_synthetic_images(same_image):
    seen = []
    for seed in ("1", "1", "2"):
        server = FakeChat(tokens=1)
        args = parse(
            "--url", "http://f", "--model", "m", "--num-requests", "3", "--warmup", "0", "--seed", seed,
            *same_image,
        )  # fmt: skip
        await bench(args, quiet(), transport=server.transport())
        seen.append(image_urls(server))
    assert seen[0] == seen[1]
    assert not set(seen[0]) & set(seen[2])


def test_tables_are_not_cut_to_80_columns_when_piped(fake_server, capsys):
    assert run_bench(parse("--url", "http://fake", "--num-requests", "2", "--warmup", "0")) == 0
    assert max(len(line) for line in capsys.readouterr().out.splitlines()) > 80


def test_errors_naming_paths_with_brackets_are_printed_verbatim(tmp_path, capsys):
    missing = tmp_path / "photos[/old]"
    assert run_bench(parse("--url", "http://f", "--model", "m", "--images", str(missing))) == 2
    assert "photos[/old]" in capsys.readouterr().err.replace("\n", "")
    assert run_compare(parse("compare", str(missing / "a.json"), str(missing / "b.json"))) == 2
    assert "photos[/old]" in capsys.readouterr().err.replace("\n", "")
    result = RequestResult(ok=True, start=0, e2e=0.5, status=200, ttft=0.1, itls=(0.01,), output_tokens=3)
    level = summarize_level([result], label="c=1", duration_s=1.0, concurrency=1)
    report = tmp_path / "run[bold].json"
    save_report(BenchReport(url="http://h:1", model="m", levels=[level]), report)
    assert run_compare(parse("compare", str(report), str(report))) == 0
    assert "A run[bold].json" in capsys.readouterr().out
