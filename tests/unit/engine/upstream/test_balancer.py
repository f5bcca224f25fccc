import pytest

from glimpse.engine.upstream.balancer import Balancer, Upstream, UpstreamSpec, parse_upstream_url
from glimpse.engine.upstream.breaker import CircuitBreaker

from ._fakes import FakeClock


@pytest.mark.parametrize(
    ("raw", "base", "weight"),
    [
        ("http://10.0.0.5:8000", "http://10.0.0.5:8000", 1.0),
        ("http://10.0.0.5:8000/", "http://10.0.0.5:8000", 1.0),
        ("http://10.0.0.5:8000/v1", "http://10.0.0.5:8000", 1.0),
        ("https://gpu.example/v1/#weight=2.5", "https://gpu.example", 2.5),
        ("http://h:1/prefix/v1#weight=3", "http://h:1/prefix", 3.0),
    ],
)
def test_parse_upstream_url(raw, base, weight):
    assert parse_upstream_url(raw) == UpstreamSpec(base, weight)


@pytest.mark.parametrize(
    "raw",
    ["10.0.0.5:8000", "ftp://h", "http://h#weight=0", "http://h#weight=-1", "http://h#w=2", "http://h?x=1"],
)
def test_parse_upstream_url_rejects(raw):
    with pytest.raises(ValueError, match=r"upstream"):
        parse_upstream_url(raw)


def balancer(*weights: float, max_in_flight=None, threshold=1):
    clock = FakeClock()
    ups = [
        Upstream(
            spec=UpstreamSpec(f"http://u{i}", w),
            breaker=CircuitBreaker(failure_threshold=threshold, cooldown_s=10, clock=clock),
        )
        for i, w in enumerate(weights)
    ]
    return Balancer(ups, max_in_flight=max_in_flight), ups, clock


def pick_and_hold(b: Balancer, n: int) -> list[str]:
    names = []
    for _ in range(n):
        u = b.pick()
        assert u is not None
        u.in_flight += 1
        names.append(u.name)
    return names


def test_least_outstanding_spreads_evenly():
    b, ups, _ = balancer(1, 1, 1)
    pick_and_hold(b, 9)
    assert [u.in_flight for u in ups] == [3, 3, 3]


def test_prefers_the_least_loaded():
    b, ups, _ = balancer(1, 1, 1)
    ups[0].in_flight, ups[1].in_flight, ups[2].in_flight = 4, 1, 2
    assert b.pick() is ups[1]


def test_ties_rotate_when_idle():
    b, ups, _ = balancer(1, 1, 1)
    assert [b.pick().name for _ in range(6)] == [u.name for u in ups] * 2


def test_weights_scale_the_share():
    b, ups, _ = balancer(2, 1, 1)
    pick_and_hold(b, 8)
    assert [u.in_flight for u in ups] == [4, 2, 2]


def test_skips_excluded_and_open_upstreams():
    b, ups, _ = balancer(1, 1, 1)
    ups[1].breaker.record_failure()  # threshold 1: open
    for _ in range(5):
        assert b.pick(exclude={ups[0].name}) is ups[2]
    assert b.pick(exclude={ups[0].name, ups[2].name}) is None


def test_half_open_upstream_gets_one_trial():
    b, ups, clock = balancer(1)
    ups[0].breaker.record_failure()
    assert b.pick() is None
    assert not b.any_available()
    assert b.seconds_until_trial() == 10
    clock.advance(10)
    assert b.pick() is ups[0]
    assert b.pick() is None


def test_in_flight_limit():
    b, ups, _ = balancer(1, 1, max_in_flight=1)
    pick_and_hold(b, 2)
    assert b.pick() is None
    assert b.all_full()
    ups[0].in_flight = 0
    assert not b.all_full()
    assert b.pick() is ups[0]


def test_rejects_empty_and_duplicates():
    clock = FakeClock()
    with pytest.raises(ValueError, match="at least one"):
        Balancer([])
    with pytest.raises(ValueError, match="duplicate"):
        Balancer.from_urls(
            ["http://a:1", "http://a:1/v1"],
            lambda: CircuitBreaker(failure_threshold=1, cooldown_s=1, clock=clock),
        )


def test_credentials_in_an_upstream_url_are_used_but_never_shown():
    spec = parse_upstream_url("http://produser:upPASSWORD42@10.0.0.5:8000/v1")
    upstream = Upstream(
        spec=spec, breaker=CircuitBreaker(failure_threshold=1, cooldown_s=1, clock=FakeClock())
    )
    assert upstream.url == "http://produser:upPASSWORD42@10.0.0.5:8000"  # requests carry them
    assert upstream.name == "http://10.0.0.5:8000"  # logs, metric labels and /readyz do not
    assert parse_upstream_url("http://[::1]:8000").name == "http://[::1]:8000"
