"""GCS fault tolerance in the chart: a Redis it deploys or an external one, reaching the operator as settings, with
the password in a Secret only and only the services' heads let in."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from bigmodel.controller.settings import OperatorSettings
from tests.chart.rendering import FULLNAME, RELEASE, RELEASE_NAMESPACE, of_kind, render, rendered_grants

REDIS = f"{FULLNAME}-gcs-redis"


def values(**redis: Any) -> dict[str, Any]:
    return {"gcsFaultTolerance": {"enabled": True, "redis": redis}}


def named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [obj for obj in of_kind(objects, kind) if obj["metadata"]["name"] == name]
    return found


def operator_env(objects: list[dict[str, Any]]) -> dict[str, str]:
    (main,) = named(objects, "Deployment", FULLNAME)["spec"]["template"]["spec"]["containers"]
    return {variable["name"]: variable["value"] for variable in main["env"] if "value" in variable}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def test_off_by_default_nothing_of_it_is_rendered() -> None:
    objects = render()
    assert not [obj for obj in objects if "gcs-redis" in obj["metadata"]["name"]]
    assert not [name for name in operator_env(objects) if "REDIS" in name]
    assert OperatorSettings.from_env(operator_env(objects)).gcs_fault_tolerance() is None


def test_deployed_redis_reaches_the_operator_and_its_password_is_only_in_a_secret() -> None:
    objects = render(values(deploy=True))
    secret = named(objects, "Secret", REDIS)
    password = base64.b64decode(secret["data"]["password"]).decode()
    assert len(password) >= 32
    others = [obj for obj in objects if obj is not secret]
    assert password not in json.dumps(others) and secret["data"]["password"] not in json.dumps(others)

    env = operator_env(objects)
    assert env["BIGMODEL_GCS_REDIS_ADDRESS"] == f"{REDIS}.{RELEASE_NAMESPACE}.svc:6379"
    assert env["BIGMODEL_GCS_REDIS_PASSWORD_SECRET"] == REDIS
    settings = OperatorSettings.from_env(env)
    assert settings.gcs_fault_tolerance() is not None and settings.gcs_redis_password_key == "password"
    assert any(
        grant.allows(RELEASE_NAMESPACE, "", "secrets", "get", REDIS) for grant in rendered_grants(values(deploy=True))
    ), "the operator may read the password's Secret, by name"

    pod = named(objects, "Deployment", REDIS)["spec"]["template"]["spec"]
    (redis,) = pod["containers"]
    password_env = next(variable for variable in redis["env"] if variable["name"] == "REDIS_PASSWORD")
    assert password_env["valueFrom"] == {"secretKeyRef": {"name": REDIS, "key": "password"}}
    assert redis["command"][:3] == ["redis-server", "--requirepass", "$(REDIS_PASSWORD)"]
    assert "--appendonly" in redis["command"] and {"name": "data", "emptyDir": {}} in pod["volumes"]
    service = named(objects, "Service", REDIS)
    assert service["spec"]["type"] == "ClusterIP" and service["spec"]["ports"][0]["port"] == 6379
    assert selects(
        service["spec"]["selector"], named(objects, "Deployment", REDIS)["spec"]["template"]["metadata"]["labels"]
    )


def test_deployed_redis_runs_non_root_with_nothing_to_escalate() -> None:
    pod = named(render(values(deploy=True)), "Deployment", REDIS)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    (redis,) = pod["containers"]
    assert redis["securityContext"] == {
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }


@pytest.mark.parametrize(("watched", "namespaces"), [([], None), (["team-a", "team-b"], ["team-a", "team-b"])])
def test_only_the_services_ray_heads_may_reach_redis(watched: list[str], namespaces: list[str] | None) -> None:
    objects = render({"watchNamespaces": watched, **values(deploy=True)})
    policy = named(objects, "NetworkPolicy", REDIS)["spec"]
    redis_labels = named(objects, "Deployment", REDIS)["spec"]["template"]["metadata"]["labels"]
    assert selects(policy["podSelector"]["matchLabels"], redis_labels) and policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    assert rule["ports"] == [{"port": 6379, "protocol": "TCP"}]
    (peer,) = rule["from"]
    assert peer["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/managed-by": "bigmodel-operator",
        "bigmodel.dev/role": "head",
    }
    assert peer["podSelector"]["matchExpressions"] == [{"key": "bigmodel.dev/service", "operator": "Exists"}]
    expected = {} if namespaces is None else {
        "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": namespaces}]
    }  # fmt: skip
    assert peer["namespaceSelector"] == expected


def test_redis_pods_are_never_taken_for_the_operators_own() -> None:
    """The clusters' NetworkPolicies let the operator's pods into Ray's dashboards, by the labels the chart tells
    the operator; Redis's pods must not carry them, nor be shut by the Ray pods' fallback policy."""
    objects = render(values(deploy=True))
    redis_labels = named(objects, "Deployment", REDIS)["spec"]["template"]["metadata"]["labels"]
    operator_labels = OperatorSettings.from_env(operator_env(objects)).pod_labels
    assert not selects(operator_labels, redis_labels)
    assert not selects(
        named(objects, "Service", f"{RELEASE}-bigmodel-operator-metrics")["spec"]["selector"], redis_labels
    )
    for policy in of_kind(objects, "NetworkPolicy"):
        if policy["metadata"]["name"] != REDIS:
            assert not selects(policy["spec"]["podSelector"]["matchLabels"], redis_labels)


def test_persistence_keeps_the_append_only_file_on_a_claim() -> None:
    objects = render(values(deploy=True, persistence={"enabled": True, "size": "2Gi", "storageClassName": "ssd"}))
    claim = named(objects, "PersistentVolumeClaim", REDIS)["spec"]
    assert claim["resources"]["requests"]["storage"] == "2Gi" and claim["storageClassName"] == "ssd"
    volumes = named(objects, "Deployment", REDIS)["spec"]["template"]["spec"]["volumes"]
    assert volumes == [{"name": "data", "persistentVolumeClaim": {"claimName": REDIS}}]


def test_an_external_redis_takes_its_address_and_the_users_secret() -> None:
    external = values(deploy=False, address="rediss://redis.example:6380", passwordSecret={"name": "redis-auth"})
    objects = render(external)
    assert not [obj for obj in objects if obj["metadata"]["name"].startswith(REDIS)]
    env = operator_env(objects)
    assert env["BIGMODEL_GCS_REDIS_ADDRESS"] == "rediss://redis.example:6380"
    assert env["BIGMODEL_GCS_REDIS_PASSWORD_SECRET"] == "redis-auth"
    assert any(
        grant.allows(RELEASE_NAMESPACE, "", "secrets", "get", "redis-auth") for grant in rendered_grants(external)
    )


@pytest.mark.parametrize(
    ("redis", "field"),
    [
        ({"deploy": False, "passwordSecret": {"name": "redis-auth"}}, "gcsFaultTolerance.redis.address"),
        ({"deploy": False, "address": "redis.example:6379"}, "gcsFaultTolerance.redis.passwordSecret.name"),
    ],
)
def test_an_external_redis_without_address_or_password_is_refused(redis: dict[str, Any], field: str) -> None:
    with pytest.raises(Exception, match=field.replace(".", r"\.")):
        render(values(**redis))
