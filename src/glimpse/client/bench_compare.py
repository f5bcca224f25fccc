"""``glimpse bench compare A.json B.json``: the same metrics side by side, with B/A ratios."""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from glimpse.client.bench_report import BenchReport, ms
from glimpse.client.bench_stats import LevelSummary

__all__ = ["MetricRow", "compare_levels", "render_compare"]


@dataclass(slots=True, frozen=True)
class MetricRow:
    name: str
    a: float | None
    b: float | None
    higher_is_better: bool
    is_latency: bool

    @property
    def ratio(self) -> float | None:
        if self.a is None or self.b is None or self.a == 0:
            return None
        return self.b / self.a

    @property
    def b_is_better(self) -> bool | None:
        ratio = self.ratio
        if ratio is None or ratio == 1:
            return None
        return (ratio > 1) == self.higher_is_better


def _metrics(level: LevelSummary) -> dict[str, tuple[float | None, bool, bool]]:
    """name -> (value, higher is better, is a latency in seconds)."""
    out: dict[str, tuple[float | None, bool, bool]] = {
        "requests/s": (level.request_throughput, True, False),
        "output tokens/s": (level.output_throughput, True, False),
        "goodput req/s": (level.goodput, True, False),
        "failed": (float(level.failed), False, False),
    }
    for name in ("ttft", "tpot", "itl", "e2e"):
        dist = getattr(level, name)
        for stat in ("mean", "p50", "p99"):
            value = None if dist is None else float(getattr(dist, stat))
            out[f"{name.upper()} {stat} (ms)"] = (value, False, True)
    return out


def compare_levels(a: LevelSummary, b: LevelSummary) -> list[MetricRow]:
    ma, mb = _metrics(a), _metrics(b)
    return [MetricRow(name, ma[name][0], mb[name][0], ma[name][1], ma[name][2]) for name in ma]


def _pairs(a: BenchReport, b: BenchReport) -> list[tuple[LevelSummary, LevelSummary]]:
    """Levels are matched by label (``c=8``, ``rate=4``); unmatched ones are left out."""
    by_label = {level.label: level for level in b.levels}
    return [(level, by_label[level.label]) for level in a.levels if level.label in by_label]


def _fmt(row: MetricRow, value: float | None) -> str:
    if value is None:
        return "-"
    if row.is_latency:
        return ms(value)
    return f"{value:.0f}" if row.name == "failed" else f"{value:.2f}"


def render_compare(a: BenchReport, b: BenchReport, console: Console, *, names: tuple[str, str]) -> int:
    """Print one table per shared level; returns how many levels were compared."""
    pairs = _pairs(a, b)
    for level_a, level_b in pairs:
        table = Table(title=f"{level_a.label}", title_justify="left")
        table.add_column("metric")
        table.add_column(f"A {names[0]}", justify="right")
        table.add_column(f"B {names[1]}", justify="right")
        table.add_column("B/A", justify="right")
        for row in compare_levels(level_a, level_b):
            ratio = row.ratio
            better = row.b_is_better
            style = "" if better is None else ("green" if better else "red")
            text = "-" if ratio is None else f"{ratio:.2f}x"
            cell = f"[{style}]{text}[/]" if style else text
            table.add_row(row.name, _fmt(row, row.a), _fmt(row, row.b), cell)
        console.print(table)
    missing = {lv.label for lv in a.levels} ^ {lv.label for lv in b.levels}
    if missing:
        console.print(f"[yellow]levels only in one report:[/yellow] {', '.join(sorted(missing))}")
    return len(pairs)
