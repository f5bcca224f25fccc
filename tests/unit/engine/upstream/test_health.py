import httpx
import pytest

from glimpse.engine.upstream.balancer import Upstream, parse_upstream_url
from glimpse.engine.upstream.breaker import BreakerState, CircuitBreaker
from glimpse.engine.upstream.health import HealthChecker

from ._fakes import Cluster, FakeClock, RecordingMetrics


@pytest.fixture
async def setup():
    cluster = Cluster("a", "b")
    clock = FakeClock()
    ups = [
        Upstream(
            spec=parse_upstream_url(f"http://{h}:8000/v1"),
            breaker=CircuitBreaker(failure_threshold=2, cooldown_s=10, clock=clock),
        )
        for h in ("a", "b")
    ]
    metrics = RecordingMetrics()
    async with httpx.AsyncClient(transport=cluster.transport) as client:
        checker = HealthChecker(
            client=lambda: client,
            upstreams=ups,
            model_name="GLM-Test",
            headers={"Authorization": "Bearer k"},
            timeout_s=1,
            interval_s=60,
            metrics=metrics,
        )
        yield cluster, ups, checker, clock, metrics


async def test_first_round_discovers_the_model_then_uses_health(setup):
    cluster, ups, checker, _, metrics = setup
    cluster["b"].models = ("x", "y")
    await checker.check_all(first=True)
    assert ups[0].model == "served/GLM-Test"  # same last path part
    assert ups[1].model is None  # ambiguous: our name is sent
    assert metrics.healthy == {"http://a:8000": True, "http://b:8000": True}
    await checker.check_all()
    assert cluster["a"].paths == ["/v1/models", "/health"]
    assert cluster["b"].paths == ["/v1/models", "/v1/models"]


async def test_missing_health_endpoint_falls_back_to_models(setup):
    cluster, ups, checker, _, _ = setup
    ups[0].model = "m"
    cluster["a"].health_status = 404
    assert await checker.check(ups[0])
    assert await checker.check(ups[0])
    assert cluster["a"].paths == ["/health", "/v1/models", "/v1/models"]


async def test_failing_first_check_takes_the_upstream_out_at_once(setup):
    cluster, ups, checker, _, metrics = setup
    cluster["a"].down = True
    await checker.check_all(first=True)
    assert ups[0].breaker.state is BreakerState.OPEN
    assert "ConnectError" in ups[0].last_error
    assert metrics.healthy["http://a:8000"] is False
    assert ups[1].healthy


async def test_later_failures_count_then_recovery_after_cooldown(setup):
    cluster, ups, checker, clock, _ = setup
    await checker.check_all(first=True)
    cluster["a"].health_status = 503
    assert not await checker.check(ups[0])
    assert ups[0].healthy  # one failure of two
    assert not await checker.check(ups[0])
    assert ups[0].breaker.state is BreakerState.OPEN
    assert "503" in ups[0].last_error
    cluster["a"].health_status = 200
    assert await checker.check(ups[0])
    assert ups[0].breaker.state is BreakerState.OPEN  # still cooling down
    clock.advance(10)
    assert await checker.check(ups[0])
    assert ups[0].breaker.state is BreakerState.CLOSED


async def test_health_checks_send_the_api_key(setup):
    cluster, ups, checker, _, _ = setup
    seen = []
    original = cluster["a"].handle

    async def spy(request):
        seen.append(request.headers.get("authorization"))
        return await original(request)

    cluster["a"].handle = spy
    await checker.check(ups[0])
    assert seen == ["Bearer k"]


async def test_a_full_local_pool_gives_no_verdict_on_the_upstream(setup):
    cluster, ups, checker, _, _ = setup
    ups[0].model = "m"
    handle = cluster["a"].handle

    async def pool_full(request: httpx.Request) -> httpx.Response:
        raise httpx.PoolTimeout("no connection available in the pool", request=request)

    cluster["a"].handle = pool_full  # type: ignore[method-assign]
    for _ in range(3):  # failure threshold 2
        await checker.check(ups[0])
    assert ups[0].breaker.state is BreakerState.CLOSED
    cluster["a"].handle = handle  # type: ignore[method-assign]
    assert await checker.check(ups[0])
