"""Per-request measurements and the statistics ``glimpse bench`` reports.

Definitions follow ``vllm bench serve`` so numbers are comparable across servers:
TTFT is measured at the first chunk that carries content, TPOT is
``(e2e - ttft) / (output_tokens - 1)`` per request, ITL is the gap between
consecutive content chunks, and goodput counts requests meeting every SLO given.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "Distribution",
    "LevelSummary",
    "RequestResult",
    "Slo",
    "percentile",
    "summarize_level",
]

PERCENTILES = (50, 90, 95, 99)


@dataclass(slots=True, frozen=True)
class RequestResult:
    """One request as the client saw it; times are seconds on ``time.perf_counter``."""

    ok: bool
    start: float
    e2e: float
    status: int | None = None
    error: str | None = None
    ttft: float | None = None
    itls: tuple[float, ...] = ()
    output_tokens: int = 0
    cache_hit: bool = False
    #: The stream carried no ``usage``, so ``output_tokens`` counts content chunks.
    tokens_from_chunks: bool = False

    @property
    def tpot(self) -> float | None:
        if self.ttft is None or self.output_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)

    @property
    def error_key(self) -> str:
        """Errors are grouped by status code, or by exception kind when none came back."""
        if self.status is not None and self.status != 200:
            return str(self.status)
        return (self.error or "error").split(":", 1)[0]


@dataclass(slots=True, frozen=True)
class Slo:
    """Latency objectives in seconds; ``None`` means not constrained."""

    ttft: float | None = None
    e2e: float | None = None

    @property
    def active(self) -> bool:
        return self.ttft is not None or self.e2e is not None

    def met(self, result: RequestResult) -> bool:
        if not result.ok:
            return False
        if self.ttft is not None and (result.ttft is None or result.ttft > self.ttft):
            return False
        return self.e2e is None or result.e2e <= self.e2e


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), on sorted input."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0..100")
    rank = (len(sorted_values) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    frac = rank - low
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * frac


@dataclass(slots=True, frozen=True)
class Distribution:
    count: int
    mean: float
    p50: float
    p90: float
    p95: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Iterable[float]) -> Distribution | None:
        data = sorted(values)
        if not data:
            return None
        p50, p90, p95, p99 = (percentile(data, q) for q in PERCENTILES)
        return cls(len(data), math.fsum(data) / len(data), p50, p90, p95, p99, data[-1])


@dataclass(slots=True, frozen=True)
class LevelSummary:
    """Everything reported for one load level; ``asdict`` of this is the JSON format."""

    label: str
    concurrency: int | None
    rate: float | None
    duration_s: float
    completed: int
    failed: int
    total_output_tokens: int
    request_throughput: float
    output_throughput: float
    ttft: Distribution | None
    tpot: Distribution | None
    itl: Distribution | None
    e2e: Distribution | None
    goodput: float | None = None
    cache_hits: int = 0
    client_cpu: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    #: Completed requests whose streams had no ``usage``: their tokens are content chunks.
    tokens_from_chunks: int = 0


def summarize_level(
    results: Sequence[RequestResult],
    *,
    label: str,
    duration_s: float,
    concurrency: int | None = None,
    rate: float | None = None,
    slo: Slo | None = None,
    client_cpu: float = 0.0,
) -> LevelSummary:
    ok = [r for r in results if r.ok]
    tokens = sum(r.output_tokens for r in ok)
    span = duration_s if duration_s > 0 else math.inf
    goodput = None
    if slo is not None and slo.active:
        goodput = sum(1 for r in ok if slo.met(r)) / span
    return LevelSummary(
        label=label,
        concurrency=concurrency,
        rate=rate,
        duration_s=duration_s,
        completed=len(ok),
        failed=len(results) - len(ok),
        total_output_tokens=tokens,
        request_throughput=len(ok) / span,
        output_throughput=tokens / span,
        ttft=Distribution.of(r.ttft for r in ok if r.ttft is not None),
        tpot=Distribution.of(t for r in ok if (t := r.tpot) is not None),
        itl=Distribution.of(gap for r in ok for gap in r.itls),
        e2e=Distribution.of(r.e2e for r in ok),
        goodput=goodput,
        cache_hits=sum(1 for r in ok if r.cache_hit),
        client_cpu=client_cpu,
        errors=dict(sorted(Counter(r.error_key for r in results if not r.ok).items())),
        tokens_from_chunks=sum(1 for r in ok if r.tokens_from_chunks),
    )
