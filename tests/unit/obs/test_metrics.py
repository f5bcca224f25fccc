import sys
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from glimpse.obs import UNMATCHED_ROUTE, Metrics

REQUIRED = {
    "glimpse_http_requests": "counter",
    "glimpse_request_duration_seconds": "histogram",
    "glimpse_time_to_first_token_seconds": "histogram",
    "glimpse_time_per_output_token_seconds": "histogram",
    "glimpse_engine_queue_depth": "gauge",
    "glimpse_engine_queue_wait_seconds": "histogram",
    "glimpse_engine_running_requests": "gauge",
    "glimpse_engine_batch_size": "histogram",
    "glimpse_prompt_tokens": "counter",
    "glimpse_generation_tokens": "counter",
    "glimpse_cache_requests": "counter",
    "glimpse_guard_verdicts": "counter",
    "glimpse_rejected_requests": "counter",
    "glimpse_model_load_seconds": "gauge",
    "glimpse_gpu_memory_bytes": "gauge",
    "glimpse_upstream_requests": "counter",
    "glimpse_upstream_errors": "counter",
    "glimpse_upstream_request_duration_seconds": "histogram",
    "glimpse_upstream_in_flight": "gauge",
    "glimpse_upstream_healthy": "gauge",
    "glimpse_upstream_routing_decisions": "counter",
    "glimpse_engine_image_embedding_cache_lookups": "counter",
    "glimpse_engine_image_embedding_cache_evictions": "counter",
    "glimpse_prefix_cache_evictions": "counter",
}


def families(metrics: Metrics):
    body, _ = metrics.render()
    return {family.name: family for family in text_string_to_metric_families(body.decode())}


def value(metrics: Metrics, name: str, **labels) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_render_exposes_every_metric_with_its_type():
    body, content_type = Metrics().render()
    assert content_type.startswith("text/plain")
    found = families(Metrics())
    for name, kind in REQUIRED.items():
        assert name in found, name
        assert found[name].type == kind, name
    assert all(name.startswith("glimpse_") for name in found)
    assert b"# HELP glimpse_http_requests_total" in body


def test_registries_are_independent():
    first, second = Metrics(), Metrics()
    first.observe_request("/v1/chat/completions", 200, 0.5)
    labels = {"route": "/v1/chat/completions", "status": "200"}
    assert value(first, "glimpse_http_requests_total", **labels) == 1
    assert value(second, "glimpse_http_requests_total", **labels) is None


def test_observe_request_labels_and_histogram():
    metrics = Metrics()
    metrics.observe_request("/infer", 200, 0.3)
    metrics.observe_request("/infer", 200, 3.0)
    metrics.observe_request(None, 404, 0.001)
    assert value(metrics, "glimpse_http_requests_total", route="/infer", status="200") == 2
    assert value(metrics, "glimpse_http_requests_total", route=UNMATCHED_ROUTE, status="404") == 1
    assert value(metrics, "glimpse_request_duration_seconds_count", route="/infer") == 2
    assert value(metrics, "glimpse_request_duration_seconds_sum", route="/infer") == pytest.approx(3.3)
    assert value(metrics, "glimpse_request_duration_seconds_bucket", route="/infer", le="0.5") == 1


def test_observe_generation_derives_time_per_output_token():
    metrics = Metrics()
    metrics.observe_generation(prompt_tokens=100, completion_tokens=11, ttft_s=0.5, total_s=1.5)
    assert value(metrics, "glimpse_prompt_tokens_total") == 100
    assert value(metrics, "glimpse_generation_tokens_total") == 11
    assert value(metrics, "glimpse_time_to_first_token_seconds_sum") == pytest.approx(0.5)
    assert value(metrics, "glimpse_time_per_output_token_seconds_sum") == pytest.approx(0.1)
    metrics.observe_generation(prompt_tokens=5, completion_tokens=1, ttft_s=0.2, total_s=0.2)
    assert value(metrics, "glimpse_time_per_output_token_seconds_count") == 1  # one token: no TPOT
    assert value(metrics, "glimpse_time_to_first_token_seconds_count") == 2


def test_observe_cache_events():
    metrics = Metrics()
    for event in ("hit", "hit", "miss", "error", "stored", "store_error", "coalesced"):
        metrics.observe_cache(event)
    assert value(metrics, "glimpse_cache_requests_total", result="hit") == 2
    assert value(metrics, "glimpse_cache_requests_total", result="miss") == 1
    assert value(metrics, "glimpse_cache_requests_total", result="error") == 1
    assert value(metrics, "glimpse_cache_stores_total", result="ok") == 1
    assert value(metrics, "glimpse_cache_stores_total", result="error") == 1
    assert value(metrics, "glimpse_cache_coalesced_total") == 1
    with pytest.raises(ValueError, match="unknown cache event"):
        metrics.observe_cache("maybe")


def test_cache_events_match_the_cache_package():
    from glimpse.cache import CacheEvent

    metrics = Metrics()
    for event in CacheEvent:
        metrics.observe_cache(event)


def test_rejections_guard_info_and_gauges():
    metrics = Metrics()
    metrics.observe_rejected("overloaded")
    metrics.observe_guard("flag")
    metrics.set_info(version="0.1.0", engine="hf", model="tiny")
    metrics.queue_depth.set(3)
    metrics.model_load.set(12.5)
    metrics.upstream_healthy.labels(upstream="http://a:8000").set(1)
    assert value(metrics, "glimpse_rejected_requests_total", reason="overloaded") == 1
    assert value(metrics, "glimpse_guard_verdicts_total", verdict="flag") == 1
    assert value(metrics, "glimpse_info", version="0.1.0", engine="hf", model="tiny") == 1
    assert value(metrics, "glimpse_engine_queue_depth") == 3
    assert value(metrics, "glimpse_model_load_seconds") == 12.5
    assert value(metrics, "glimpse_upstream_healthy", upstream="http://a:8000") == 1


def test_client_disconnects_are_counted_by_stage():
    metrics = Metrics()
    metrics.observe_disconnect("waiting")
    metrics.observe_disconnect("streaming")
    metrics.observe_disconnect("streaming")
    assert value(metrics, "glimpse_client_disconnects_total", stage="waiting") == 1
    assert value(metrics, "glimpse_client_disconnects_total", stage="streaming") == 2
    with pytest.raises(ValueError, match="unknown disconnect stage"):
        metrics.observe_disconnect("user-42")  # labels stay a fixed set


def test_gpu_memory_is_empty_without_torch(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert families(Metrics())["glimpse_gpu_memory_bytes"].samples == []


def _torch_with_cuda(initialized: bool):
    cuda = SimpleNamespace(
        is_available=lambda: True,
        is_initialized=lambda: initialized,
        device_count=lambda: 2,
        memory_allocated=lambda i: 100 * (i + 1),
        memory_reserved=lambda i: 200 * (i + 1),
        get_device_properties=lambda i: SimpleNamespace(total_memory=1000),
    )
    return SimpleNamespace(cuda=cuda)


def test_gpu_memory_read_on_scrape_when_cuda_runs(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", _torch_with_cuda(initialized=True))
    metrics = Metrics()
    assert value(metrics, "glimpse_gpu_memory_bytes", device="cuda:1", kind="allocated") == 200
    assert value(metrics, "glimpse_gpu_memory_bytes", device="cuda:0", kind="reserved") == 200
    assert value(metrics, "glimpse_gpu_memory_bytes", device="cuda:0", kind="total") == 1000


def test_gpu_memory_does_not_initialise_cuda(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", _torch_with_cuda(initialized=False))
    assert families(Metrics())["glimpse_gpu_memory_bytes"].samples == []
