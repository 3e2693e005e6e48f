"""The operator's metrics Service, the optional ServiceMonitor, and the Grafana dashboard built on the metric names."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.chart.exported import HISTOGRAMS, METRIC_NAMES
from tests.chart.rendering import CHART_DIR, RELEASE_NAMESPACE, of_kind, render

DASHBOARD = CHART_DIR / "dashboards" / "bigmodel.json"
# A PromQL identifier that names one of ours; label names and functions never start with bigmodel_.
METRIC = re.compile(r"\bbigmodel_[a-zA-Z0-9_]*")
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


def operator_pod_labels(objects: list[dict[str, Any]]) -> dict[str, str]:
    (deployment,) = of_kind(objects, "Deployment")
    return deployment["spec"]["template"]["metadata"]["labels"]


def test_metrics_service_selects_the_operator_on_9090() -> None:
    objects = render()
    (service,) = of_kind(objects, "Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"].items() <= operator_pod_labels(objects).items()
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}]


def test_metrics_off_renders_no_service_and_no_monitor() -> None:
    objects = render({"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}})
    assert not of_kind(objects, "Service") and not of_kind(objects, "ServiceMonitor")


def test_service_monitor() -> None:
    assert not of_kind(render(), "ServiceMonitor")
    objects = render({"metrics": {"serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prom"}}}})
    (monitor,) = of_kind(objects, "ServiceMonitor")
    (service,) = of_kind(objects, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == RELEASE_NAMESPACE
    assert monitor["metadata"]["labels"]["release"] == "prom"
    spec = monitor["spec"]
    assert set(spec) == {"namespaceSelector", "selector", "endpoints"}
    assert spec["namespaceSelector"] == {"matchNames": [RELEASE_NAMESPACE]}
    assert set(spec["selector"]) == {"matchLabels"}
    assert spec["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    # honorLabels keeps the per-resource series' namespace label (the alerts' and the dashboard's tables need it).
    assert spec["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s", "honorLabels": True}]


def test_dashboard_config_map() -> None:
    assert not of_kind(render(), "ConfigMap")
    (config_map,) = of_kind(render({"grafana": {"dashboard": {"enabled": True}}}), "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["namespace"] == RELEASE_NAMESPACE
    assert json.loads(config_map["data"]["bigmodel.json"]) == json.loads(DASHBOARD.read_text())

    # Helm merges maps with the defaults: null removes the default label.
    labels = {"team": "ml", "grafana_dashboard": None}
    values = {"grafana": {"dashboard": {"enabled": True, "labels": labels, "namespace": "monitoring"}}}
    (config_map,) = of_kind(render(values), "ConfigMap")
    assert config_map["metadata"]["labels"]["team"] == "ml" and "grafana_dashboard" not in config_map["metadata"]["labels"]
    assert config_map["metadata"]["namespace"] == "monitoring"


def panels() -> list[dict[str, Any]]:
    return json.loads(DASHBOARD.read_text())["panels"]


def expressions() -> list[str]:
    return [target["expr"] for panel in panels() for target in panel["targets"]]


def known_series() -> set[str]:
    return set(METRIC_NAMES) | {name + suffix for name in HISTOGRAMS for suffix in HISTOGRAM_SERIES}


@pytest.mark.parametrize("expr", expressions())
def test_dashboard_uses_only_the_operator_metrics(expr: str) -> None:
    used = set(METRIC.findall(expr))
    assert used, f"{expr!r} queries none of the operator's metrics"
    assert used <= known_series(), f"{expr!r} uses {sorted(used - known_series())}, which the operator does not export"


def test_dashboard_shows_every_operator_metric() -> None:
    used = {name for expr in expressions() for name in METRIC.findall(expr)}
    shown = {name for name in METRIC_NAMES if name in used or any(name + suffix in used for suffix in HISTOGRAM_SERIES)}
    assert shown == set(METRIC_NAMES)


def test_dashboard_queries_the_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "datasource"]
    assert variable["type"] == "datasource" and variable["query"] == "prometheus"
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert all(target["datasource"] == panel["datasource"] for target in panel["targets"]), panel["title"]
    ids = [panel["id"] for panel in panels()]
    assert len(ids) == len(set(ids))


def test_dashboard_has_the_promised_panels() -> None:
    titles = {panel["title"] for panel in panels()}
    assert {
        "Jobs by phase",
        "Restarts and worker replacements",
        "Time to Running",
        "Job duration",
        "Reconcile rate",
        "Reconcile latency",
        "Reconcile errors",
        "GPUs requested vs in use",
    } <= titles
