import json

import pytest
from rich.console import Console

from glimpse.client.bench_report import BenchReport, load_report, render_report, save_report, write_plot
from glimpse.client.bench_stats import RequestResult, Slo, summarize_level


def level(label, e2e, concurrency=1, n=10, failed=0):
    results = [
        RequestResult(ok=True, start=0, e2e=e2e, status=200, ttft=e2e / 4, itls=(0.01, 0.02), output_tokens=3)
        for _ in range(n)
    ]
    results += [RequestResult(ok=False, start=0, e2e=0.1, status=503, error="503: busy")] * failed
    return summarize_level(results, label=label, duration_s=2.0, concurrency=concurrency, slo=Slo(e2e=1.0))


def report(*levels):
    return BenchReport(url="http://h:1", model="m", levels=list(levels), config={"max_tokens": 3})


def test_json_round_trip_is_lossless(tmp_path):
    original = report(level("c=1", 0.5), level("c=8", 1.5, concurrency=8, failed=2))
    path = tmp_path / "r.json"
    save_report(original, path)
    loaded = load_report(path)
    assert loaded == original
    assert json.loads(path.read_text())["levels"][1]["errors"] == {"503": 2}


def test_reports_from_before_the_chunk_count_field_still_load(tmp_path):
    path = tmp_path / "old.json"
    data = report(level("c=1", 0.5)).to_json()
    del data["levels"][0]["tokens_from_chunks"]
    path.write_text(json.dumps(data))
    assert load_report(path).levels[0].tokens_from_chunks == 0


def test_load_rejects_foreign_or_broken_files(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"format": "vllm"}))
    with pytest.raises(ValueError, match="not a glimpse-bench"):
        load_report(path)
    path.write_text(json.dumps({"format": "glimpse-bench/1", "url": "u"}))
    with pytest.raises(ValueError, match="malformed"):
        load_report(path)
    for not_an_object in ("[]", '"text"', "3"):
        path.write_text(not_an_object)
        with pytest.raises(ValueError, match="malformed"):
            load_report(path)


def test_render_shows_levels_errors_and_warnings():
    r = report(level("c=1", 0.5), level("c=8", 1.5, concurrency=8, failed=2))
    r.warnings.append("client busy")
    console = Console(record=True, width=200)
    render_report(r, console)
    text = console.export_text()
    assert "c=8" in text
    assert "125.0" in text
    assert "503: 2" in text
    assert "client busy" in text


def test_plot_is_a_png(tmp_path):
    path = tmp_path / "p.png"
    write_plot(report(level("c=1", 0.5), level("c=8", 1.5, concurrency=8)), path)
    assert path.read_bytes()[:4] == b"\x89PNG"
