"""The benchmark report: its JSON form, the tables printed at the end, and the plot."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from glimpse.client.bench_stats import Distribution, LevelSummary

__all__ = ["FORMAT", "BenchReport", "load_report", "render_report", "save_report", "write_plot"]

FORMAT = "glimpse-bench/1"
_DISTRIBUTIONS = ("ttft", "tpot", "itl", "e2e")


@dataclass(slots=True)
class BenchReport:
    url: str
    model: str
    levels: list[LevelSummary]
    config: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "created": self.created,
            "url": self.url,
            "model": self.model,
            "config": self.config,
            "warnings": self.warnings,
            "levels": [dataclasses.asdict(level) for level in self.levels],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BenchReport:
        if data.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} report (format={data.get('format')!r})")
        levels = []
        for raw in data["levels"]:
            values = dict(raw)
            for name in _DISTRIBUTIONS:
                values[name] = Distribution(**values[name]) if values.get(name) else None
            levels.append(LevelSummary(**values))
        return cls(
            url=data["url"],
            model=data["model"],
            levels=levels,
            config=data.get("config", {}),
            warnings=data.get("warnings", []),
            created=data.get("created", ""),
        )


def save_report(report: BenchReport, path: Path) -> None:
    path.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")


def load_report(path: Path) -> BenchReport:
    try:
        return BenchReport.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (KeyError, TypeError, AttributeError) as exc:  # AttributeError: not a JSON object
        raise ValueError(f"{path}: malformed report ({exc})") from exc


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def _pick(dist: Distribution | None, stat: str) -> float | None:
    return None if dist is None else float(getattr(dist, stat))


def _summary_table(report: BenchReport) -> Table:
    table = Table(title=f"glimpse bench · {report.model} @ {report.url}", title_justify="left")
    for name in ("level", "ok", "err", "req/s", "out tok/s", "TTFT p50", "TTFT p99", "TPOT p50"):
        table.add_column(name, justify="left" if name == "level" else "right")
    for name in ("ITL p50", "E2E p50", "E2E p99", "goodput", "cache", "client CPU"):
        table.add_column(name, justify="right")
    for lv in report.levels:
        table.add_row(
            lv.label,
            str(lv.completed),
            str(lv.failed),
            f"{lv.request_throughput:.2f}",
            f"{lv.output_throughput:.1f}",
            ms(_pick(lv.ttft, "p50")),
            ms(_pick(lv.ttft, "p99")),
            ms(_pick(lv.tpot, "p50")),
            ms(_pick(lv.itl, "p50")),
            ms(_pick(lv.e2e, "p50")),
            ms(_pick(lv.e2e, "p99")),
            "-" if lv.goodput is None else f"{lv.goodput:.2f}",
            str(lv.cache_hits),
            f"{lv.client_cpu:.0%}",
        )
    table.caption = "latencies in ms; throughput and goodput per second"
    return table


def _latency_table(report: BenchReport) -> Table:
    table = Table(title="latency distribution (ms)", title_justify="left")
    table.add_column("level")
    table.add_column("metric")
    stats = ("mean", "p50", "p90", "p95", "p99", "max")
    for stat in stats:
        table.add_column(stat, justify="right")
    for lv in report.levels:
        for name in _DISTRIBUTIONS:
            dist: Distribution | None = getattr(lv, name)
            table.add_row(lv.label, name.upper(), *(ms(_pick(dist, s)) for s in stats))
        table.add_section()
    return table


def render_report(report: BenchReport, console: Console) -> None:
    console.print(_summary_table(report))
    console.print(_latency_table(report))
    for lv in report.levels:
        if lv.errors:
            errors = ", ".join(f"{key}: {count}" for key, count in lv.errors.items())
            console.print(f"[red]{lv.label} errors[/red] {errors}")
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")


def write_plot(report: BenchReport, path: Path) -> None:
    """Latency against output throughput, one point per level, so the knee is visible."""
    import matplotlib  # lazy: matplotlib is optional, only for --plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("ttft", "TTFT (ms)"), ("tpot", "TPOT (ms)"), ("e2e", "E2E latency (ms)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 4.5), constrained_layout=True)
    xs = [lv.output_throughput for lv in report.levels]
    for ax, (name, ylabel) in zip(axes, panels, strict=True):
        for stat, style in (("p50", "o-"), ("p99", "s--")):
            ys = [(_pick(getattr(lv, name), stat) or float("nan")) * 1000 for lv in report.levels]
            ax.plot(xs, ys, style, label=stat)
            if stat == "p50":
                for lv, x, y in zip(report.levels, xs, ys, strict=True):
                    ax.annotate(lv.label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel("output tokens/s")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(f"glimpse bench · {report.model}")
    fig.savefig(path, dpi=120)
    plt.close(fig)
