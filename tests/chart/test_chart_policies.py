"""What the chart lets the operator do, how its pod runs, and who may reach the Ray pods it creates."""

from __future__ import annotations

from typing import Any

import pytest

from bigmodel.builders import naming
from bigmodel.controller.settings import OperatorSettings
from tests.chart.rendering import RELEASE, RELEASE_NAMESPACE, of_kind, render, rendered_rbac_rules

NAMESPACES = ["team-a", "team-b"]

# The lead's measured list of the operator's API calls; tests of the running operator compare it with recorded ones.
OPERATOR_RULES = {
    # No get of the owners: a pass reads them from Kopf's watch. A get of a pod or Service only when a create
    # answers 409 (whose is it?); Services are watched, as pods are, by the operator's informers.
    *(("bigmodel.dev", "bigmodeljobs", verb) for verb in ("list", "watch", "patch", "delete")),
    ("bigmodel.dev", "bigmodeljobs/status", "patch"),
    *(("bigmodel.dev", "bigmodelservices", verb) for verb in ("list", "watch", "patch")),
    ("bigmodel.dev", "bigmodelservices/status", "patch"),
    *(("", "pods", verb) for verb in ("get", "list", "watch", "create", "delete")),
    *(("", "services", verb) for verb in ("get", "list", "watch", "create", "patch", "delete")),
    ("", "events", "create"),
    # Each cluster's token Secret and NetworkPolicy: made (again in place of any holder of the name) and deleted,
    # never read.
    *(("", "secrets", verb) for verb in ("create", "delete")),
    *(("networking.k8s.io", "networkpolicies", verb) for verb in ("create", "delete")),
}
# Volcano's PodGroups, with gangScheduling.volcano only: made before a cluster's pods, read when a create finds the name
# taken, deleted with the cluster. Kueue needs nothing: pods join its groups by labels.
VOLCANO_RULES = {("scheduling.volcano.sh", "podgroups", verb) for verb in ("create", "get", "delete")}
TOKEN_KEY = f"{RELEASE}-bigmodel-operator-token-key"
# What Kopf's peering was recorded doing (tests/integration/test_rbac.py): no get, no create.
PEERING_VERBS = ("list", "watch", "patch")


def deployment(values: dict[str, Any] | None = None) -> dict[str, Any]:
    (found,) = of_kind(render(values), "Deployment")
    return found


def container(values: dict[str, Any] | None = None) -> dict[str, Any]:
    (found,) = deployment(values)["spec"]["template"]["spec"]["containers"]
    return found


def env(values: dict[str, Any] | None = None) -> dict[str, str]:
    return {variable["name"]: variable["value"] for variable in container(values)["env"] if "value" in variable}


# The operator's pod


def test_operator_runs_non_root_on_a_read_only_root_filesystem() -> None:
    pod = deployment()["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container()["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    (mount,) = container()["volumeMounts"]
    assert mount["mountPath"] == "/tmp"
    assert {"name": mount["name"], "emptyDir": {}} in pod["volumes"]


def test_operator_command_probe_and_resources() -> None:
    operator = container()
    assert operator["command"] == ["bigmodel", "operator"]
    ports = {port["name"]: port["containerPort"] for port in operator["ports"]}
    assert ports == {"healthz": 8080, "metrics": 9090}
    assert operator["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert operator["resources"] == {
        "requests": {"cpu": "100m", "memory": "256Mi"},
        "limits": {"cpu": "1", "memory": "512Mi"},
    }


def test_defaults_run_one_standalone_operator_on_every_namespace() -> None:
    assert env() == {
        "BIGMODEL_LOG_LEVEL": "INFO",
        "BIGMODEL_OPERATOR_NAMESPACE": RELEASE_NAMESPACE,
        "BIGMODEL_OPERATOR_POD_LABELS": f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/name=bigmodel-operator",
        "BIGMODEL_TOKEN_KEY_SECRET": TOKEN_KEY,
        "BIGMODEL_LIVENESS_PORT": "8080",
        "BIGMODEL_METRICS_PORT": "9090",
    }
    settings = OperatorSettings.from_env(env())
    assert settings.namespaces == [] and settings.peering is None and settings.liveness_port == 8080
    assert settings.allowed_service_accounts == [], "any service account, as before the setting existed"
    assert deployment()["spec"]["replicas"] == 1
    # Two standalone operators would both act on every job while a rollout overlaps them.
    assert deployment()["spec"]["strategy"] == {"type": "Recreate"}


def test_values_reach_the_operator_settings() -> None:
    values = {
        "watchNamespaces": NAMESPACES,
        "defaultStorage": "s3://bucket/bigmodel",
        "allowedServiceAccounts": ["trainer", "server"],
        "replicas": 2,
        "logLevel": "DEBUG",
        "metrics": {"enabled": False},
    }
    variables = env(values)
    assert variables["BIGMODEL_LOG_LEVEL"] == "DEBUG"
    assert variables["BIGMODEL_METRICS_PORT"] == "off"
    settings = OperatorSettings.from_env(variables)
    assert settings.namespaces == NAMESPACES
    assert settings.default_storage == "s3://bucket/bigmodel"
    assert settings.allowed_service_accounts == ["trainer", "server"]
    assert settings.peering == RELEASE
    assert deployment(values)["spec"]["replicas"] == 2
    assert deployment(values)["spec"]["strategy"] == {"type": "RollingUpdate"}
    pod_id = next(variable for variable in container(values)["env"] if variable["name"] == "POD_ID")
    assert pod_id["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_scheduling_is_passed_through() -> None:
    values = {
        "nodeSelector": {"pool": "ops"},
        "tolerations": [{"key": "ops", "operator": "Exists"}],
        "affinity": {"podAntiAffinity": {}},
        "imagePullSecrets": [{"name": "registry"}],
    }
    pod = deployment(values)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == values["nodeSelector"]
    assert pod["tolerations"] == values["tolerations"]
    assert pod["affinity"] == values["affinity"]
    assert pod["imagePullSecrets"] == values["imagePullSecrets"]
    assert not {"nodeSelector", "tolerations", "affinity", "imagePullSecrets"} & set(
        deployment()["spec"]["template"]["spec"]
    )


# RBAC


def token_key_role(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (role,) = [role for role in of_kind(objects, "Role") if role["metadata"]["name"].endswith("-token-key")]
    return role


def test_the_only_secret_the_operator_may_read_is_its_token_key() -> None:
    for values in ({}, {"watchNamespaces": NAMESPACES}, {"watchNamespaces": [RELEASE_NAMESPACE]}):
        objects = render(values)
        reads = [
            (role["kind"], role["metadata"].get("namespace"), rule)
            for role in [*of_kind(objects, "Role"), *of_kind(objects, "ClusterRole")]
            for rule in role["rules"]
            if "secrets" in rule["resources"] and {"get", "list", "watch"} & set(rule["verbs"])
        ]
        rule = {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [TOKEN_KEY], "verbs": ["get"]}
        assert reads == [("Role", RELEASE_NAMESPACE, rule)], values
        assert OperatorSettings.from_env(env(values)).token_key_secret == TOKEN_KEY
        (binding,) = [b for b in of_kind(objects, "RoleBinding") if b["metadata"]["name"].endswith("-token-key")]
        assert binding["roleRef"]["name"] == token_key_role(objects)["metadata"]["name"]
        assert_binds_the_operator(binding)
    # It makes its key on first start: where its own namespace is not watched, only this Role lets it.
    assert rules_of(token_key_role(render({"watchNamespaces": NAMESPACES}))) == {
        ("", "secrets", "get"), ("", "secrets", "create")
    }  # fmt: skip
    assert rules_of(token_key_role(render())) == {("", "secrets", "get")}


def test_cluster_wide_rbac_is_exactly_the_operator_rules() -> None:
    objects = render()
    (role,) = of_kind(objects, "ClusterRole")
    assert rules_of(role) == OPERATOR_RULES
    assert [role["metadata"]["name"] for role in of_kind(objects, "Role")] == [
        token_key_role(objects)["metadata"]["name"]
    ]
    (binding,) = of_kind(objects, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert_binds_the_operator(binding)


def test_namespaced_rbac_grants_the_same_rules_in_each_watched_namespace_only() -> None:
    values = {"watchNamespaces": NAMESPACES}
    objects = render(values)
    key_role = token_key_role(objects)
    roles = [role for role in of_kind(objects, "Role") if role is not key_role]
    assert sorted(role["metadata"]["namespace"] for role in roles) == NAMESPACES
    for role in roles:
        assert rules_of(role) == OPERATOR_RULES
    bindings = [b for b in of_kind(objects, "RoleBinding") if b["roleRef"]["name"] != key_role["metadata"]["name"]]
    assert sorted(binding["metadata"]["namespace"] for binding in bindings) == NAMESPACES
    for binding in bindings:
        assert binding["roleRef"]["kind"] == "Role"
        assert_binds_the_operator(binding)
    # The operator turns Kopf's namespace and CRD scanning off, so it needs nothing cluster-wide.
    assert not of_kind(objects, "ClusterRole") and not of_kind(objects, "ClusterRoleBinding")
    assert rendered_rbac_rules(values) == OPERATOR_RULES | rules_of(key_role)


@pytest.mark.parametrize("mode", [{}, {"watchNamespaces": NAMESPACES}], ids=["cluster-wide", "namespaced"])
def test_volcano_adds_exactly_its_podgroups_and_tells_the_operator(mode: dict[str, Any]) -> None:
    values = {**mode, "gangScheduling": {"volcano": True}}
    assert rendered_rbac_rules(values) == rendered_rbac_rules(mode) | VOLCANO_RULES
    assert not {rule for rule in rendered_rbac_rules(mode) if rule[0] == "scheduling.volcano.sh"}
    assert env(values)["BIGMODEL_VOLCANO"] == "true"
    assert OperatorSettings.from_env(env(values)).volcano is True
    assert OperatorSettings.from_env(env(mode)).volcano is False


@pytest.mark.parametrize(
    ("values", "peerings", "scope", "kind"),
    [
        ({"replicas": 2}, "clusterkopfpeerings", "Cluster", "ClusterKopfPeering"),
        ({"replicas": 2, "watchNamespaces": NAMESPACES}, "kopfpeerings", "Namespaced", "KopfPeering"),
    ],
)
def test_several_replicas_get_kopf_peering(values: dict[str, Any], peerings: str, scope: str, kind: str) -> None:
    peering = {("kopf.dev", peerings, verb) for verb in PEERING_VERBS}
    assert rendered_rbac_rules(values) == OPERATOR_RULES | peering | {("", "secrets", "get")}
    (crd,) = of_kind(render(values), "CustomResourceDefinition")
    assert crd["metadata"]["name"] == f"{peerings}.kopf.dev"
    assert crd["spec"]["group"] == "kopf.dev" and crd["spec"]["scope"] == scope
    assert crd["spec"]["names"]["kind"] == kind and crd["spec"]["names"]["plural"] == peerings
    assert [version["name"] for version in crd["spec"]["versions"]] == ["v1"]
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert not of_kind(render(values | {"peering": {"installCRD": False}}), "CustomResourceDefinition")
    assert not of_kind(render({k: v for k, v in values.items() if k != "replicas"}), "CustomResourceDefinition")


@pytest.mark.parametrize(
    ("values", "kind", "namespaces"),
    [
        ({"replicas": 2}, "ClusterKopfPeering", [None]),
        ({"replicas": 2, "watchNamespaces": NAMESPACES}, "KopfPeering", NAMESPACES),
        # The CRD may come from another Kopf-based operator; the peering object is this release's own.
        ({"replicas": 2, "peering": {"installCRD": False}}, "ClusterKopfPeering", [None]),
    ],
)
def test_several_replicas_get_the_peering_object_kopf_needs(
    values: dict[str, Any], kind: str, namespaces: list[str | None]
) -> None:
    objects = render(values)
    peerings = of_kind(objects, kind)
    assert [peering["metadata"].get("namespace") for peering in peerings] == namespaces
    for peering in peerings:
        assert peering["apiVersion"] == "kopf.dev/v1"
        # The operator's BIGMODEL_PEERING, which Kopf patches but never creates.
        assert peering["metadata"]["name"] == env(values)["BIGMODEL_PEERING"] == RELEASE
        # Created after the release's CRD exists: see kopf-peering.yaml.
        assert peering["metadata"]["annotations"] == {"helm.sh/hook": "post-install,post-upgrade"}
        assert set(peering) == {"apiVersion", "kind", "metadata"}
    assert not [obj for obj in render() if obj["apiVersion"] == "kopf.dev/v1"]


def rules_of(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def assert_binds_the_operator(binding: dict[str, Any]) -> None:
    service_account = deployment()["spec"]["template"]["spec"]["serviceAccountName"]
    (account,) = of_kind(render(), "ServiceAccount")
    assert account["metadata"]["name"] == service_account
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": service_account, "namespace": RELEASE_NAMESPACE}]


# NetworkPolicy


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) == {"matchLabels"}, "only matchLabels selectors are expected here"
    return selector["matchLabels"].items() <= labels.items()


def test_the_chart_opens_nothing_and_shuts_every_ray_pod() -> None:
    (policy,) = of_kind(render(), "NetworkPolicy")
    spec = policy["spec"]
    operator_pod = deployment()["spec"]["template"]["metadata"]["labels"]
    for kind in ("BigModelJob", "BigModelService"):
        for labels in (
            naming.labels("digits", 0, "head", kind=kind),
            naming.labels("digits", 0, "worker", 1, kind=kind),
        ):
            assert matches(spec["podSelector"], labels)
    assert not matches(spec["podSelector"], operator_pod), "the operator must not lock itself out"
    assert spec["policyTypes"] == ["Ingress"] and spec["ingress"] == [], "a fallback that admits no one"


def test_the_clusters_policies_let_in_exactly_the_operator_the_chart_runs() -> None:
    """The operator builds each cluster's policy from what the chart tells it of its own pods."""
    settings = OperatorSettings.from_env(env())
    pod = deployment()["spec"]["template"]
    peer = settings.operator_peer().peer()
    assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": RELEASE_NAMESPACE}}
    assert matches(peer["podSelector"], pod["metadata"]["labels"])
    assert not matches(peer["podSelector"], naming.labels("digits", 0, "worker", 1)), "a Ray pod is not the operator"
    assert peer["podSelector"]["matchLabels"] == deployment()["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize(
    ("values", "namespaces"),
    [
        ({}, [RELEASE_NAMESPACE]),
        ({"watchNamespaces": NAMESPACES}, NAMESPACES),
        ({"networkPolicy": {"namespaces": ["ml-a", "ml-b", "ml-c"]}}, ["ml-a", "ml-b", "ml-c"]),
        ({"watchNamespaces": NAMESPACES, "networkPolicy": {"namespaces": ["team-a"]}}, ["team-a"]),
        ({"networkPolicy": {"enabled": False}}, []),
    ],
)
def test_network_policy_namespaces(values: dict[str, Any], namespaces: list[str]) -> None:
    policies = [p for p in of_kind(render(values), "NetworkPolicy") if p["metadata"]["name"].endswith("-ray-fallback")]
    assert sorted(policy["metadata"]["namespace"] for policy in policies) == namespaces
    assert len({str(policy["spec"]) for policy in policies}) <= 1, "every namespace gets the same policy"
