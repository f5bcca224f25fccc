"""deploy/grafana: the dashboard loads and asks only for metrics and labels Glimpse exports."""

from __future__ import annotations

import json
import re

import pytest
from prometheus_client.metrics import MetricWrapperBase
from tests.deploy.deploy_files import DEPLOY

from glimpse.obs.metrics import Metrics

DASHBOARD = DEPLOY / "grafana" / "glimpse-dashboard.json"
#: Labels Prometheus adds at scrape time (and the Kubernetes relabelling adds).
_TARGET_LABELS = {"instance", "job", "namespace", "pod", "app", "deployment"}


def exported_series() -> set[str]:
    """Series names in Glimpse's ``/metrics`` body, from its ``# TYPE`` lines."""
    body, _ = Metrics().render()
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", body.decode(), re.MULTILINE):
        if kind == "counter":  # the TYPE line already names the _total series
            names.update({name, name.removesuffix("_total") + "_created"})
        elif kind == "histogram":
            names.update(name + suffix for suffix in ("_bucket", "_sum", "_count", "_created"))
        else:
            names.add(name)
    return names


def exported_labels() -> dict[str, set[str]]:
    """Label names per series (the wrappers know them even before a series has samples)."""
    labels: dict[str, set[str]] = {"glimpse_gpu_memory_bytes": {"device", "kind"}}
    for metric in vars(Metrics()).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        # No public accessor for a wrapper's name, type and label names.
        name, kind, names = metric._name, metric._type, set(metric._labelnames)
        if kind == "counter":
            labels[name + "_total"] = names
        elif kind == "histogram":
            labels.update({name + "_bucket": names | {"le"}, name + "_sum": names, name + "_count": names})
        else:
            labels[name] = names
    return labels


@pytest.fixture(scope="module")
def dashboard():
    return json.loads(DASHBOARD.read_text())


def _exprs(dashboard) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def test_dashboard_shape(dashboard):
    assert dashboard["uid"]
    assert dashboard["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert any(v["type"] == "datasource" for v in dashboard["templating"]["list"])
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"


def test_dashboard_covers_the_operator_questions(dashboard):
    text = " ".join(_exprs(dashboard))
    for needed in (
        "glimpse_http_requests_total",
        "glimpse_request_duration_seconds_bucket",
        "glimpse_time_to_first_token_seconds_bucket",
        "glimpse_engine_queue_depth",
        "glimpse_engine_running_requests",
        "glimpse_generation_tokens_total",
        'glimpse_cache_requests_total{result="hit"}',
        "glimpse_rejected_requests_total",
    ):
        assert needed in text


def test_queries_use_only_exported_metric_names(dashboard):
    exported = exported_series()
    assert "glimpse_request_duration_seconds_bucket" in exported  # the parser itself works
    assert set(exported_labels()) <= exported
    used = {name for expr in _exprs(dashboard) for name in re.findall(r"\bglimpse_[a-z0-9_]+\b", expr)}
    assert used
    assert used <= exported, used - exported


def test_queries_use_only_existing_labels(dashboard):
    labels = exported_labels()
    for expr in _exprs(dashboard):
        for name, selector in re.findall(r"\b(glimpse_[a-z0-9_]+)\{([^}]*)\}", expr):
            for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector):
                assert label in labels[name], (expr, label)
        # `sum by (a, b) (... metric ...)`: grouping labels must exist on the metric inside.
        for grouping, inner in re.findall(r"by \(([^)]*)\) \((.*)\)", expr):
            metrics = re.findall(r"\bglimpse_[a-z0-9_]+\b", inner)
            for label in (g.strip() for g in grouping.split(",")):
                assert all(label in labels[m] | _TARGET_LABELS for m in metrics), (expr, label)
