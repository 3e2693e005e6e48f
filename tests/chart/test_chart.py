"""The Helm chart lints, renders valid Kubernetes objects for every option, ships the generated CRDs, and its
values schema rejects what the chart does not understand."""

from __future__ import annotations

import copy
import json
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from bigmodel.version import OPERATOR_IMAGE, VERSION
from tests.chart.rendering import CHART_DIR, REPO, of_kind, render, render_files

KUBERNETES_VERSION = "1.37"
# Kinds from CRDs that kubernetes-validate has no schema for; their tests check them field by field.
NOT_BUILT_IN = {"ServiceMonitor", "PrometheusRule", "ClusterKopfPeering", "KopfPeering"}

SCENARIOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespaced": {"watchNamespaces": ["team-a", "team-b"]},
    "peering": {"replicas": 2},
    "namespaced-peering": {"watchNamespaces": ["team-a", "team-b"], "replicas": 2},
    "service-monitor": {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}}},
    "dashboard": {"grafana": {"dashboard": {"enabled": True, "namespace": "monitoring"}}},
    "alerts": {"metrics": {"alerts": {"enabled": True, "labels": {"release": "prometheus"}}}},
    "no-network-policy": {"networkPolicy": {"enabled": False}},
    "no-metrics": {"metrics": {"enabled": False}},
    "everything-set": {
        "image": {"repository": "registry.example/bigmodel/operator", "tag": "dev", "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "registry"}],
        "defaultStorage": "s3://checkpoints/bigmodel",
        "allowedServiceAccounts": ["trainer"],
        "logLevel": "DEBUG",
        "resources": {"requests": {"cpu": "200m", "memory": "300Mi"}, "limits": {"cpu": 2, "memory": "1Gi"}},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}
                    ]
                }
            }
        },
        "peering": {"installCRD": False},
        "replicas": 3,
        "metrics": {
            "serviceMonitor": {"enabled": True, "interval": "1m"},
            "alerts": {"enabled": True, "restartFraction": 1, "stalledAfterSeconds": 600, "serviceNotReadyFor": "1h"},
        },
        "grafana": {"dashboard": {"enabled": True, "labels": {"dashboards": "ops"}}},
        "networkPolicy": {"namespaces": ["ml-a", "ml-b"]},
    },
}


@pytest.fixture(scope="module", params=sorted(SCENARIOS))
def scenario(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(SCENARIOS[request.param])


def test_chart_version_follows_the_operator() -> None:
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["version"] == chart["appVersion"] == VERSION, "Chart.yaml must follow operator/bigmodel/version.py"


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_lint_is_clean(name: str) -> None:
    report = helm.lint(CHART_DIR, SCENARIOS[name], strict=True)
    # Severity 1 is information only ("icon is recommended"); warnings and errors fail.
    problems = [message for message in report["messages"] if message["severity"] >= 2]
    assert not report["errors"] and not problems, report


def test_every_rendered_object_is_valid_for_kubernetes(scenario: tuple[str, list[dict[str, Any]]]) -> None:
    name, objects = scenario
    assert objects
    for obj in objects:
        if obj["kind"] in NOT_BUILT_IN:
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{name}: {obj['kind']} {obj['metadata']['name']}: {error.message} at {list(error.path)}")


def test_rendered_objects_have_unique_names(scenario: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = scenario
    keys = [(obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"]) for obj in objects]
    assert len(keys) == len(set(keys)), keys


def test_validation_is_strict() -> None:
    """Guards the test above: a misspelt field is an error, not silently ignored."""
    (deployment,) = of_kind(render(), "Deployment")
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_default_image_is_the_operator_image_of_this_version() -> None:
    (deployment,) = of_kind(render(), "Deployment")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == OPERATOR_IMAGE


def test_chart_crds_are_the_generated_ones() -> None:
    generated = {path.name: path.read_bytes() for path in sorted((REPO / "crds").glob("*.yaml"))}
    shipped = {path.name: path.read_bytes() for path in sorted((CHART_DIR / "crds").iterdir())}
    assert generated
    assert shipped == generated, (
        "charts/bigmodel-operator/crds/ differs from crds/, which `bigmodel crds` generates: copy them over with "
        "`rm charts/bigmodel-operator/crds/* && cp crds/*.yaml charts/bigmodel-operator/crds/`"
    )
    with helm.Chart.load(CHART_DIR) as chart:
        assert sorted(crd["filename"] for crd in chart.crds) == [f"{CHART_DIR.name}/crds/{name}" for name in generated]


def test_notes_point_at_an_example_that_exists() -> None:
    notes = render_files()[f"{CHART_DIR.name}/templates/NOTES.txt"]
    assert "kubectl apply -f examples/digits.yaml" in notes
    assert (REPO / "examples" / "digits.yaml").is_file()
    assert "kubectl get bmj -w" in notes
    namespaced = render_files({"watchNamespaces": ["team-a"]})[f"{CHART_DIR.name}/templates/NOTES.txt"]
    assert "kubectl apply -n team-a -f examples/digits.yaml" in namespaced


# Values schema


def schema() -> dict[str, Any]:
    return json.loads((CHART_DIR / "values.schema.json").read_text())


def defaults() -> dict[str, Any]:
    return yaml.safe_load((CHART_DIR / "values.yaml").read_text())


def test_schema_is_draft_07_and_accepts_the_defaults() -> None:
    jsonschema.Draft7Validator.check_schema(schema())
    assert schema()["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator(schema()).validate(defaults())


def _objects_with_properties(node: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)] if "properties" in node else []
    for key, child in node.get("properties", {}).items():
        found += _objects_with_properties(child, f"{path}.{key}")
    return found


def test_schema_closes_every_object_it_defines() -> None:
    for path, node in _objects_with_properties(schema(), "values"):
        assert node.get("additionalProperties") is False, f"{path} accepts unknown keys"


def test_schema_describes_exactly_the_documented_values() -> None:
    """Every key of values.yaml is in the schema with a description, and the schema has no key values.yaml lacks."""

    def walk(values: dict[str, Any], node: dict[str, Any], path: str) -> None:
        properties = node["properties"]
        assert set(values) == set(properties), f"{path}: values.yaml {sorted(values)} vs schema {sorted(properties)}"
        for key, value in values.items():
            assert properties[key].get("description"), f"{path}.{key} has no description in the schema"
            if isinstance(value, dict) and "properties" in properties[key]:
                walk(value, properties[key], f"{path}.{key}")

    walk(defaults(), schema(), "values")


@pytest.mark.parametrize(
    "values",
    [
        {"replica": 2},  # unknown key
        {"image": {"registry": "example"}},  # unknown nested key
        {"metrics": {"serviceMonitor": {"enabled": True, "scrapeEvery": "1m"}}},
        {"metrics": {"alerts": {"enabled": True, "restartFraction": 1.5}}},
        {"metrics": {"alerts": {"enabled": True, "startupDeadlineFraction": 0}}},
        {"metrics": {"alerts": {"enabled": True, "stalledAfterSeconds": "30m"}}},
        {"metrics": {"alerts": {"enabled": True, "serviceNotReadyFor": 900}}},
        {"replicas": "2"},  # wrong type
        {"replicas": 0},
        {"watchNamespaces": "team-a"},
        {"watchNamespaces": ["Team_A"]},
        {"logLevel": "LOUD"},
        {"networkPolicy": {"enabled": "yes"}},
        {"resources": {"requests": {"cpu": True}}},
    ],
    ids=repr,
)
def test_values_outside_the_schema_are_rejected(values: dict[str, Any]) -> None:
    with helm.Chart.load(CHART_DIR) as chart, pytest.raises(helm.HelmValuesError):
        chart.validate_schema(chart.merge_values(values))
    with pytest.raises(helm.HelmValuesError):
        render(values)


def test_the_dashboard_file_is_packaged() -> None:
    with helm.Chart.load(CHART_DIR) as chart:
        names = {file["name"] for file in chart.files}
    assert "dashboards/bigmodel.json" in names
