"""The opt-in PrometheusRule: every alert is PromQL that Prometheus accepts, reads only series and labels the
operator really exports, and names the job or service it is about."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import promql_parser
import pytest

from tests.chart.exported import SERIES_LABELS
from tests.chart.rendering import RELEASE_NAMESPACE, of_kind, render, rendered_rbac_rules

ALERTS_ON = {"metrics": {"alerts": {"enabled": True}}}
PROMISED = {
    "BigModelJobFailed",
    "BigModelJobRestartsNearLimit",
    "BigModelJobStuckStarting",
    "BigModelJobProgressStalled",
    "BigModelServiceNotReady",
    "BigModelOperatorReconcileErrors",
}
# What Prometheus's alert templates may say here: a label of the alert, or its value through a humanize function.
TEMPLATE = re.compile(r"{{(.*?)}}")
ALLOWED_TEMPLATE = re.compile(r"^ (\$labels\.(?P<label>\w+)|\$value \| humanize\w*) $")


def rules(values: dict[str, Any] = ALERTS_ON) -> list[dict[str, Any]]:
    (rule,) = of_kind(render(values), "PrometheusRule")
    return [alert for group in rule["spec"]["groups"] for alert in group["rules"]]


@dataclass
class Reads:
    """What one PromQL expression reads: series with the labels it matches on, and labels it groups or joins by."""

    series: dict[str, set[str]] = field(default_factory=dict)
    labels: set[str] = field(default_factory=set)

    def visit(self, node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"{node} selects no metric by name"
            self.series.setdefault(node.name, set()).update(m.name for m in node.matchers.matchers)
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            self.labels.update(node.modifier.labels)
        elif isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None:
            matching = node.modifier.matching
            self.labels.update([*(matching.labels if matching else []), *(node.modifier.group_labels or [])])

    def exported_labels(self) -> set[str]:
        """The labels the operator exports on the series read."""
        return set().union(*(SERIES_LABELS.get(series, frozenset()) for series in self.series))


def reads(expr: str) -> Reads:
    """The expression parsed by a real PromQL parser (it raises on anything Prometheus would refuse)."""
    found = Reads()
    promql_parser.walk(promql_parser.parse(expr), found.visit)
    return found


def test_no_prometheus_rule_unless_asked_for_and_metrics_are_on() -> None:
    assert not of_kind(render(), "PrometheusRule")
    assert not of_kind(render({"metrics": {"enabled": False, "alerts": {"enabled": True}}}), "PrometheusRule")


def test_the_rule_lives_with_the_release_and_carries_the_selector_labels() -> None:
    (rule,) = of_kind(
        render({"metrics": {"alerts": {"enabled": True, "labels": {"release": "prom"}}}}), "PrometheusRule"
    )
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == RELEASE_NAMESPACE and rule["metadata"]["labels"]["release"] == "prom"


def test_every_promised_alert_is_there_with_a_severity() -> None:
    alerts = rules()
    assert {alert["alert"] for alert in alerts} == PROMISED and len(alerts) == len(PROMISED)
    assert all(alert["labels"]["severity"] in ("warning", "critical") for alert in alerts)


@pytest.mark.parametrize("alert", rules(), ids=lambda alert: alert["alert"])
def test_the_expression_parses_and_reads_only_what_the_operator_exports(alert: dict[str, Any]) -> None:
    found = reads(alert["expr"])
    unknown = set(found.series) - set(SERIES_LABELS)
    assert not unknown, f"{alert['alert']} reads {sorted(unknown)}, which the operator does not export"
    for series, matched in found.series.items():
        assert matched <= SERIES_LABELS[series], f"{series} has no label {sorted(matched - SERIES_LABELS[series])}"
    exported = found.exported_labels()
    assert found.labels <= exported, f"{alert['alert']} groups or joins by {sorted(found.labels - exported)}"
    if "for" in alert:
        promql_parser.parse_duration(alert["for"])


@pytest.mark.parametrize("alert", rules(), ids=lambda alert: alert["alert"])
def test_the_annotations_name_the_resource_with_its_exported_labels(alert: dict[str, Any]) -> None:
    exported = reads(alert["expr"]).exported_labels()
    for key in ("summary", "description"):
        text = alert["annotations"][key]
        used = set()
        for template in TEMPLATE.findall(text):
            allowed = ALLOWED_TEMPLATE.match(template)
            assert allowed, f"{alert['alert']} {key}: {{{{{template}}}}} is not a label or a humanized value"
            used.add(allowed["label"])
        assert {"namespace", "name"} <= used, f"{alert['alert']} {key} does not name the resource"
        assert used - {None} <= exported, f"{alert['alert']} {key} uses labels the expression does not have"


def test_thresholds_come_from_the_values() -> None:
    values = {
        "restartFraction": 0.9,
        "startupDeadlineFraction": 0.75,
        "stalledAfterSeconds": 7200,
        "serviceNotReadyFor": "1h",
        "reconcileErrorsFor": "5m",
    }
    alerts = {alert["alert"]: alert for alert in rules({"metrics": {"alerts": {"enabled": True, **values}}})}
    assert ">= 0.9" in alerts["BigModelJobRestartsNearLimit"]["expr"]
    assert "bigmodel_job_spec_startup_deadline_seconds * 0.75" in alerts["BigModelJobStuckStarting"]["expr"]
    assert "> 7200" in alerts["BigModelJobProgressStalled"]["expr"]
    assert alerts["BigModelServiceNotReady"]["for"] == "1h"
    assert alerts["BigModelOperatorReconcileErrors"]["for"] == "5m"


def test_alerts_grant_the_operator_nothing() -> None:
    """The chart installs the PrometheusRule; the operator never reads or writes one, so its RBAC stays the same."""
    for mode in ({}, {"watchNamespaces": ["team-a"]}):
        granted = rendered_rbac_rules({**mode, **ALERTS_ON})
        assert granted == rendered_rbac_rules(mode)
        assert not any(group == "monitoring.coreos.com" for group, _, _ in granted)
