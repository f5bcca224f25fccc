import pytest
from rich.console import Console

from glimpse.client.bench_compare import compare_levels, render_compare
from glimpse.client.bench_report import BenchReport
from glimpse.client.bench_stats import RequestResult, summarize_level


def level(label, e2e, n):
    results = [
        RequestResult(ok=True, start=0, e2e=e2e, status=200, ttft=e2e / 2, output_tokens=5) for _ in range(n)
    ]
    return summarize_level(results, label=label, duration_s=1.0)


def test_ratios_and_which_side_is_better():
    rows = {row.name: row for row in compare_levels(level("c=1", 1.0, 10), level("c=1", 0.5, 20))}
    assert rows["requests/s"].ratio == pytest.approx(2.0)
    assert rows["requests/s"].b_is_better is True
    assert rows["E2E p50 (ms)"].ratio == pytest.approx(0.5)
    assert rows["E2E p50 (ms)"].b_is_better is True  # lower latency is better
    assert rows["failed"].ratio is None  # 0 / 0


def test_levels_match_by_label_and_unmatched_are_named():
    a = BenchReport("u", "m", [level("c=1", 1.0, 10), level("c=8", 2.0, 10)])
    b = BenchReport("u", "m", [level("c=8", 4.0, 5), level("c=64", 1.0, 1)])
    console = Console(record=True, width=120)
    assert render_compare(a, b, console, names=("a.json", "b.json")) == 1
    text = console.export_text()
    assert "c=8" in text
    assert "2.00x" in text
    assert "levels only in one report: c=1, c=64" in text
