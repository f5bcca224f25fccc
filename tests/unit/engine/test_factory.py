from glimpse.engine.factory import PrometheusBatchObserver, PrometheusUpstreamMetrics
from glimpse.obs import Metrics


def sample(metrics: Metrics, name: str, **labels) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_routing_decisions_are_counted_by_outcome():
    metrics = Metrics()
    hook = PrometheusUpstreamMetrics(metrics)
    for outcome in ("affinity_kept", "affinity_kept", "overridden_load", "no_key"):
        hook.on_route(outcome)
    name = "glimpse_upstream_routing_decisions_total"
    assert sample(metrics, name, outcome="affinity_kept") == 2
    assert sample(metrics, name, outcome="overridden_load") == 1
    assert sample(metrics, name, outcome="no_key") == 1
    assert sample(metrics, name, outcome="overridden_health") is None


def test_image_embedding_lookups_and_evictions_are_counted():
    metrics = Metrics()
    observer = PrometheusBatchObserver(metrics)
    observer.on_image_embeddings(hits=2, misses=1, evictions=0)
    observer.on_image_embeddings(hits=0, misses=3, evictions=2)
    lookups = "glimpse_engine_image_embedding_cache_lookups_total"
    assert sample(metrics, lookups, result="hit") == 2
    assert sample(metrics, lookups, result="miss") == 4
    assert sample(metrics, "glimpse_engine_image_embedding_cache_evictions_total") == 2


def test_prefix_cache_evictions_are_counted():
    metrics = Metrics()
    observer = PrometheusBatchObserver(metrics)
    name = "glimpse_prefix_cache_evictions_total"
    assert sample(metrics, name) == 0
    observer.on_prefix_evictions(1)
    observer.on_prefix_evictions(2)
    assert sample(metrics, name) == 3


def test_shared_and_cached_prefix_blocks_are_gauges():
    metrics = Metrics()
    observer = PrometheusBatchObserver(metrics)
    observer.on_prefix_blocks(shared=5, cached=40)
    observer.on_prefix_blocks(shared=2, cached=41)
    assert sample(metrics, "glimpse_prefix_cache_shared_blocks") == 2
    assert sample(metrics, "glimpse_prefix_cache_cached_blocks") == 41
