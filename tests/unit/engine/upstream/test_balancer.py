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


def routed(*weights: float, margin=2, max_in_flight=None):
    clock = FakeClock()
    ups = [
        Upstream(
            spec=UpstreamSpec(f"http://u{i}", w),
            breaker=CircuitBreaker(failure_threshold=1, cooldown_s=10, clock=clock),
        )
        for i, w in enumerate(weights)
    ]
    outcomes: list[str] = []
    b = Balancer(ups, max_in_flight=max_in_flight, load_margin=margin, on_route=outcomes.append)
    return b, {u.name: u for u in ups}, outcomes


def home_of(b: Balancer, key: str) -> str:
    return b._ring.home(key)


def test_the_same_key_always_goes_to_the_same_upstream():
    b, ups, outcomes = routed(1, 1, 1)
    for key in ("image:1", "image:2", "text:3"):
        names = {b.pick(key=key).name for _ in range(5)}
        assert names == {home_of(b, key)}
    assert outcomes == ["affinity_kept"] * 15
    homes = {home_of(b, f"image:{i}") for i in range(60)}
    assert homes == set(ups)  # different keys use every upstream


def test_a_busy_home_within_the_margin_keeps_the_key():
    b, ups, outcomes = routed(1, 1, 1, margin=2)
    home = ups[home_of(b, "k")]
    home.in_flight = 2  # the others are idle: exactly the margin
    assert b.pick(key="k") is home
    assert outcomes == ["affinity_kept"]


def test_a_home_beyond_the_margin_is_passed_over_for_the_next_on_the_ring():
    b, ups, outcomes = routed(1, 1, 1, margin=2)
    walk = list(b._ring.walk("k"))
    ups[walk[0]].in_flight = 3
    assert b.pick(key="k") is ups[walk[1]]
    assert outcomes == ["overridden_load"]
    # Compared with the least-loaded upstream that could take it, not with zero:
    for name in walk[1:]:
        ups[name].in_flight = 1
    assert b.pick(key="k") is ups[walk[0]]


def test_a_full_home_counts_as_load():
    b, ups, outcomes = routed(1, 1, margin=100, max_in_flight=1)
    walk = list(b._ring.walk("k"))
    ups[walk[0]].in_flight = 1
    assert b.pick(key="k") is ups[walk[1]]
    assert outcomes == ["overridden_load"]


def test_an_unhealthy_or_failed_home_is_skipped():
    b, ups, outcomes = routed(1, 1, 1)
    walk = list(b._ring.walk("k"))
    ups[walk[0]].breaker.record_failure()  # threshold 1: open
    assert b.pick(key="k") is ups[walk[1]]
    ups[walk[0]].breaker.record_success()
    assert b.pick(key="k", exclude={walk[0]}) is ups[walk[1]]  # the home failed this request
    assert b.pick(key="k", exclude=set(walk)) is None
    assert outcomes == ["overridden_health", "overridden_health"]


def test_a_request_without_a_key_goes_to_the_least_outstanding():
    b, ups, outcomes = routed(1, 1, 1)
    loads = dict(zip(ups, (4, 1, 2), strict=True))
    for name, load in loads.items():
        ups[name].in_flight = load
    assert b.pick() is ups["http://u1"]
    assert outcomes == ["no_key"]


def test_least_outstanding_policy_ignores_keys():
    clock = FakeClock()
    ups = [
        Upstream(UpstreamSpec(f"http://u{i}"), CircuitBreaker(failure_threshold=1, cooldown_s=1, clock=clock))
        for i in range(3)
    ]
    outcomes: list[str] = []
    b = Balancer(ups, policy="least_outstanding", on_route=outcomes.append)
    picked = []
    for _ in range(6):
        u = b.pick(key="k")
        u.in_flight += 1
        picked.append(u)
    assert [u.in_flight for u in ups] == [2, 2, 2]
    assert outcomes == []
