"""Each Ray cluster's token Secret and NetworkPolicy, as the operator makes them against a real HTTP API (the
emulator): in the resource's own namespace, whatever it is; the policy selecting exactly that cluster's pods; the
token one nobody else can have put there; both gone with the cluster, and with the resource."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bigmodel.api.training_report import TrainingReport
from bigmodel.api.wire import OWNER_UID_LABEL, RAY_AUTH_TOKEN_ENV, TOKEN_SECRET_KEY
from bigmodel.builders.naming import submission_id
from bigmodel.controller.cluster_tokens import KEY_FIELD, ClusterTokens
from bigmodel.controller.settings import OperatorSettings
from tests.integration.test_job_operator import JOBS, WAIT_S, job_manifest
from tests.integration.test_service_operator import SERVICES, service_manifest
from tests.support.emulator import PROJECT_CRDS, Emulator, KubeClient, running_emulator, wait_for
from tests.support.fake_ray import FakeRay
from tests.support.operator import running_operator

TEAM = "team-a"
NETWORK_POLICIES = ("networking.k8s.io/v1", "networkpolicies")
SETTINGS = OperatorSettings()


@pytest.fixture()
def emulator() -> Any:
    with running_emulator(PROJECT_CRDS, namespaces=("default", TEAM)) as running:
        yield running


@pytest.fixture()
async def kube(emulator: Emulator) -> AsyncIterator[KubeClient]:
    async with KubeClient(emulator.url) as client:
        yield client


async def live_pods(kube: KubeClient) -> list[dict[str, Any]]:
    found = await kube.list("v1", "pods", namespace=TEAM)
    return [pod for pod in found if not pod["metadata"].get("deletionTimestamp")]


async def pod_names(kube: KubeClient, prefix: str, count: int) -> list[str] | None:
    names = sorted(
        pod["metadata"]["name"] for pod in await live_pods(kube) if pod["metadata"]["name"].startswith(prefix)
    )
    return names if len(names) == count else None


async def mark_ready(kube: KubeClient, names: list[str]) -> None:
    for name in names:
        status = {"phase": "Running", "podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}
        await kube.patch_status("v1", "pods", name, status, namespace=TEAM)


def selects(policy: dict[str, Any], pod: dict[str, Any]) -> bool:
    wanted = policy["spec"]["podSelector"]["matchLabels"]
    return wanted.items() <= (pod["metadata"].get("labels") or {}).items()


async def tokens_of(kube: KubeClient) -> ClusterTokens:
    key = await kube.get("v1", "secrets", SETTINGS.token_key_secret, namespace=SETTINGS.namespace)
    assert key is not None, "the operator made no token key"
    return ClusterTokens(base64.b64decode(key["data"][KEY_FIELD]))


def token_in(secret: dict[str, Any]) -> str:
    return base64.b64decode(secret["data"][TOKEN_SECRET_KEY]).decode()


async def test_a_job_in_any_namespace_gets_its_own_token_and_policy_and_loses_them_with_each_cluster(
    emulator: Emulator, kube: KubeClient
) -> None:
    ray = FakeRay()
    with running_operator(emulator, ray):
        # Pods of another job of the same namespace, and of the same name made earlier (another uid), are near.
        await kube.create(*JOBS, job_manifest("other"), namespace=TEAM)
        created = await kube.create(*JOBS, job_manifest(), namespace=TEAM)
        uid = created["metadata"]["uid"]
        first = await wait_for(lambda: pod_names(kube, "demo-g1", 3), WAIT_S, "the job's pods were not made")
        await wait_for(lambda: pod_names(kube, "other-g1", 3), WAIT_S, "the other job's pods were not made")
        tokens = await tokens_of(kube)

        secret = await kube.get("v1", "secrets", "demo-g1-ray-token", namespace=TEAM)
        assert secret is not None and token_in(secret) == tokens.token(uid, 1)
        assert secret["metadata"]["ownerReferences"][0]["uid"] == uid
        other = await kube.get("v1", "secrets", "other-g1-ray-token", namespace=TEAM)
        assert other is not None and token_in(other) != token_in(secret), "two clusters share a token"
        for pod in await live_pods(kube):
            (token_env,) = [e for e in pod["spec"]["containers"][0]["env"] if e["name"] == RAY_AUTH_TOKEN_ENV]
            cluster = pod["metadata"]["name"].rsplit("-", 1)[0]
            assert token_env["valueFrom"] == {"secretKeyRef": {"name": f"{cluster}-ray-token", "key": "token"}}

        policy = await kube.get(*NETWORK_POLICIES, "demo-g1", namespace=TEAM)
        assert policy is not None and policy["metadata"]["ownerReferences"][0]["uid"] == uid
        selected = sorted(pod["metadata"]["name"] for pod in await live_pods(kube) if selects(policy, pod))
        assert selected == first
        impostor = {"metadata": {"labels": {**policy["spec"]["podSelector"]["matchLabels"], OWNER_UID_LABEL: "x"}}}
        assert not selects(policy, impostor), "a pod of another owner of the same name must not be selected"
        (peers, _operator) = policy["spec"]["ingress"]
        assert peers["from"] == [{"podSelector": policy["spec"]["podSelector"]}]

        # A failed run: the cluster is rebuilt as generation 2, with a token and a policy of its own.
        await mark_ready(kube, first)
        await wait_for(lambda: submission_id(uid, 1) in ray.submitted_ids(), WAIT_S, "the training was never submitted")
        ray.fail(submission_id(uid, 1), "lost")
        await wait_for(lambda: pod_names(kube, "demo-g2", 3), WAIT_S, "the cluster was not rebuilt")
        gone = await wait_for(
            lambda: _all_gone(kube, [("v1", "secrets", "demo-g1-ray-token"), (*NETWORK_POLICIES, "demo-g1")]),
            WAIT_S,
            "the first cluster's Secret and policy outlived it",
        )
        assert gone
        second = await kube.get("v1", "secrets", "demo-g2-ray-token", namespace=TEAM)
        assert second is not None and token_in(second) == tokens.token(uid, 2) != token_in(secret)
        assert await kube.get(*NETWORK_POLICIES, "demo-g2", namespace=TEAM) is not None

        ray.succeed(submission_id(uid, 2), TrainingReport(step=10, total_steps=10, done=True))
        await kube.delete(*JOBS, "demo", namespace=TEAM)
        await wait_for(
            lambda: _all_gone(kube, [("v1", "secrets", "demo-g2-ray-token"), (*NETWORK_POLICIES, "demo-g2")]),
            WAIT_S,
            "the job's Secret and policy outlived it",
        )


async def test_a_service_opens_its_inference_port_to_whom_its_spec_says(emulator: Emulator, kube: KubeClient) -> None:
    ray = FakeRay()
    clients = [{"namespaceSelector": {"matchLabels": {"team": "web"}}}]
    with running_operator(emulator, ray):
        await kube.create(*SERVICES, service_manifest(), namespace=TEAM)
        await kube.create(*SERVICES, service_manifest("open-to-web", servingFrom=clients), namespace=TEAM)
        policy = await wait_for(lambda: kube.get(*NETWORK_POLICIES, "demo-s0", namespace=TEAM), WAIT_S, "no policy")
        narrowed = await wait_for(
            lambda: kube.get(*NETWORK_POLICIES, "open-to-web-s0", namespace=TEAM), WAIT_S, "no policy"
        )
    serving = {rule["ports"][0]["port"]: rule["from"] for rule in policy["spec"]["ingress"] if "ports" in rule}
    assert serving[8000] == [{"podSelector": {}}], "by default, the service's own namespace"
    assert serving[8265][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": SETTINGS.namespace}
    operator_rule = next(rule for rule in policy["spec"]["ingress"] if rule["from"] == serving[8265])
    assert [port["port"] for port in operator_rule["ports"]] == [8265, 8000], "the dashboard and the canary's traffic"
    assert [rule["from"] for rule in narrowed["spec"]["ingress"] if rule.get("ports", [{}])[0].get("port") == 8000] == [
        clients
    ]


async def test_a_token_secret_someone_else_put_in_the_way_is_replaced(emulator: Emulator, kube: KubeClient) -> None:
    forged = {
        "metadata": {"name": "demo-g1-ray-token"},
        "data": {TOKEN_SECRET_KEY: base64.b64encode(b"the-attackers-token").decode()},
    }
    await kube.create("v1", "secrets", forged, namespace=TEAM)
    ray = FakeRay()
    with running_operator(emulator, ray):
        created = await kube.create(*JOBS, job_manifest(), namespace=TEAM)
        await wait_for(lambda: pod_names(kube, "demo-g1", 3), WAIT_S, "the job's pods were not made")
        secret = await kube.get("v1", "secrets", "demo-g1-ray-token", namespace=TEAM)
        tokens = await tokens_of(kube)
    assert secret is not None and token_in(secret) == tokens.token(created["metadata"]["uid"], 1)
    assert secret["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]


async def test_the_token_key_is_made_once_and_kept_across_restarts(emulator: Emulator, kube: KubeClient) -> None:
    ray = FakeRay()
    with running_operator(emulator, ray):
        first = await wait_for(
            lambda: kube.get("v1", "secrets", SETTINGS.token_key_secret, namespace=SETTINGS.namespace),
            WAIT_S,
            "the operator made no token key",
        )
    with running_operator(emulator, ray):
        again = await kube.get("v1", "secrets", SETTINGS.token_key_secret, namespace=SETTINGS.namespace)
    assert again is not None and again["data"] == first["data"]
    assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    assert len(base64.b64decode(first["data"][KEY_FIELD])) == 32


async def _all_gone(kube: KubeClient, objects: list[tuple[str, str, str]]) -> bool:
    for api_version, plural, name in objects:
        if await kube.get(api_version, plural, name, namespace=TEAM) is not None:
            return False
    return True
