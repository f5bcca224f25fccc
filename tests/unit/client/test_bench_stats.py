import pytest

from glimpse.client.bench_stats import Distribution, RequestResult, Slo, percentile, summarize_level


def ok(ttft, e2e, tokens, itls=(), cache_hit=False, tokens_from_chunks=False):
    return RequestResult(
        ok=True,
        start=0.0,
        e2e=e2e,
        status=200,
        ttft=ttft,
        itls=tuple(itls),
        output_tokens=tokens,
        cache_hit=cache_hit,
        tokens_from_chunks=tokens_from_chunks,
    )


def failed(status=None, error="ConnectError: refused"):
    return RequestResult(ok=False, start=0.0, e2e=0.1, status=status, error=error)


@pytest.mark.parametrize(
    ("q", "expected"),
    # numpy.percentile([1, 2, 3, 4, 10], q) with the default linear method
    [(0, 1.0), (50, 3.0), (90, 7.6), (95, 8.8), (99, 9.76), (100, 10.0)],
)
def test_percentile_matches_numpy_linear(q, expected):
    assert percentile([1, 2, 3, 4, 10], q) == pytest.approx(expected)


def test_percentile_edge_cases():
    assert percentile([5.0], 99) == 5.0
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="outside"):
        percentile([1.0], 101)


def test_distribution_sorts_its_input():
    dist = Distribution.of([10, 1, 4, 3, 2])
    assert dist is not None
    assert (dist.count, dist.mean, dist.p50, dist.p90, dist.max) == (5, 4.0, 3.0, pytest.approx(7.6), 10)
    assert Distribution.of([]) is None


def test_tpot_excludes_the_first_token():
    assert ok(ttft=1.0, e2e=4.0, tokens=4).tpot == pytest.approx(1.0)
    assert ok(ttft=1.0, e2e=4.0, tokens=1).tpot is None


def test_summary_throughput_counts_only_successes():
    results = [ok(0.1, 1.0, 10), ok(0.2, 2.0, 20, cache_hit=True, tokens_from_chunks=True)]
    results += [failed(503, "503: busy"), failed()]
    s = summarize_level(results, label="c=2", duration_s=4.0, concurrency=2)
    assert s.tokens_from_chunks == 1
    assert (s.completed, s.failed, s.total_output_tokens) == (2, 2, 30)
    assert s.request_throughput == pytest.approx(0.5)
    assert s.output_throughput == pytest.approx(7.5)
    assert s.errors == {"503": 1, "ConnectError": 1}
    assert s.cache_hits == 1
    assert s.goodput is None  # no SLO given
    assert s.e2e is not None
    assert s.e2e.mean == pytest.approx(1.5)


def test_itl_pools_gaps_of_all_requests():
    s = summarize_level([ok(0.1, 1, 3, itls=[0.1, 0.3]), ok(0.1, 1, 2, itls=[0.2])], label="x", duration_s=1)
    assert s.itl is not None
    assert (s.itl.count, s.itl.p50) == (3, pytest.approx(0.2))


def test_goodput_requires_every_slo():
    results = [ok(0.1, 1.0, 5), ok(0.5, 1.0, 5), ok(0.1, 3.0, 5), failed(500, "500: x")]
    assert summarize_level(results, label="x", duration_s=2, slo=Slo(ttft=0.2)).goodput == pytest.approx(1.0)
    assert summarize_level(results, label="x", duration_s=2, slo=Slo(e2e=2.0)).goodput == pytest.approx(1.0)
    both = summarize_level(results, label="x", duration_s=2, slo=Slo(ttft=0.2, e2e=2.0))
    assert both.goodput == pytest.approx(0.5)


def test_slo_fails_a_request_without_ttft():
    assert not Slo(ttft=1.0).met(ok(None, 0.5, 0))
    assert Slo(e2e=1.0).met(ok(None, 0.5, 0))
