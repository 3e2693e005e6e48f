"""The API emulator behaves enough like a Kubernetes API server for Kopf and the `kubernetes` client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import kubernetes
import pytest
from kopf.testing import KopfRunner

from tests.support.emulator import ApiError, Emulator, Fault, KubeClient, wait_for

JOBS = ("bigmodel.dev/v1alpha1", "bigmodeljobs")
WAIT_S = 15.0


def job(name: str, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "bigmodel.dev/v1alpha1",
        "kind": "BigModelJob",
        "metadata": {"name": name, "labels": labels},
        "spec": {"workload": {"builtin": {"task": "digits"}}},
    }


def task(name: str) -> dict[str, Any]:
    """A spec patch that changes only the job's task."""
    return {"spec": {"workload": {"builtin": {"task": name}}}}


def tiny_operator(kubeconfig: Path) -> kopf.OperatorRegistry:
    """A Kopf operator that gives every BigModelJob an owned ConfigMap, an Event, and a finalizer."""
    registry = kopf.OperatorRegistry()
    # A registry of one's own starts without Kopf's default login handlers. Kopf's own kubeconfig login reads
    # $KUBECONFIG when called; the `kubernetes` client's login would not: it reads $KUBECONFIG once, at import.
    kopf.on.login(registry=registry)(kopf.login_with_kubeconfig)
    core = kubernetes.client.CoreV1Api(kubernetes.config.new_client_from_config(config_file=str(kubeconfig)))

    @kopf.on.create("bigmodel.dev", "v1alpha1", "bigmodeljobs", id="child", registry=registry)
    def create_child(body: kopf.Body, name: str, namespace: str | None, patch: kopf.Patch, **_: Any) -> None:
        config_map: dict[str, Any] = {"metadata": {"name": f"{name}-config"}, "data": {"job": name}}
        kopf.adopt(config_map, owner=body)
        core.create_namespaced_config_map(str(namespace), config_map)
        kopf.info(body, reason="ChildCreated", message=f"config map {name}-config")
        # A field the CRD declares: a server with the schema prunes the `status.<handler id>` Kopf would store a
        # returned result in.
        patch.status["message"] = f"config map {name}-config"

    @kopf.on.delete("bigmodel.dev", "v1alpha1", "bigmodeljobs", id="goodbye", registry=registry)
    def say_goodbye(**_: Any) -> None:
        logging.getLogger(__name__).info("deleted")

    return registry


def operator_settings() -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    settings.persistence.finalizer = "bigmodel.dev/finalizer"
    settings.posting.level = logging.INFO
    # The server ends a watch stream after the timeout Kopf asks for; a short one keeps the shutdown quick.
    settings.watching.server_timeout = 5
    return settings


async def test_kopf_operator_reconciles_against_the_emulator(emulator: Emulator, kube: KubeClient) -> None:
    with KopfRunner(
        ["run", "--standalone", "--namespace=default", "--verbose"],
        registry=tiny_operator(emulator.kubeconfig),
        settings=operator_settings(),
        env={"KUBECONFIG": str(emulator.kubeconfig)},
        timeout=30,
    ) as runner:
        created = await kube.create(*JOBS, job("alpha"))
        uid = created["metadata"]["uid"]

        child = await wait_for(lambda: kube.get("v1", "configmaps", "alpha-config"), WAIT_S,
                               "the operator did not create the job's config map")
        assert child["data"] == {"job": "alpha"}
        assert child["metadata"]["ownerReferences"][0]["uid"] == uid

        async def message_in_status() -> dict[str, Any] | None:
            body = await kube.get(*JOBS, "alpha")
            return body if body and body.get("status", {}).get("message") else None

        done = await wait_for(message_in_status, WAIT_S, "Kopf did not patch the handler's status")
        assert done["status"]["message"] == "config map alpha-config"
        assert "bigmodel.dev/finalizer" in done["metadata"]["finalizers"]

        events = await wait_for(lambda: kube.events(involved_name="alpha"), WAIT_S, "Kopf posted no event")
        assert any(event["reason"] == "ChildCreated" for event in events)

        await kube.patch_status(*JOBS, "alpha", {"phase": "Running"})
        assert (await kube.get(*JOBS, "alpha") or {})["status"]["phase"] == "Running"

        await kube.delete(*JOBS, "alpha")
        await wait_for(lambda: _absent(kube, *JOBS, "alpha"), WAIT_S,
                       "Kopf did not release its finalizer after the delete handler")
        await wait_for(lambda: _absent(kube, "v1", "configmaps", "alpha-config"), WAIT_S,
                       "the owned config map was not garbage-collected")

    assert "deleted" in runner.output
    calls = {(call.verb, call.resource, call.subresource) for call in emulator.operator_calls()}
    assert ("watch", "bigmodeljobs", None) in calls
    assert ("patch", "bigmodeljobs", "status") in calls
    assert ("create", "configmaps", None) in calls
    assert ("create", "events", None) in calls
    assert all(call.user_agent != "bigmodel-tests-client" for call in emulator.operator_calls())


# The same contract as the real operator's: a separate `kopf run` process that finds the API through $KUBECONFIG.
SUBPROCESS_OPERATOR = """
import kopf, kubernetes

@kopf.on.create("bigmodel.dev", "v1alpha1", "bigmodeljobs")
def create_child(name, namespace, **_):
    kubernetes.client.CoreV1Api().create_namespaced_config_map(
        namespace, {"metadata": {"name": name + "-config"}, "data": {"job": name}})
"""


async def test_kopf_run_in_a_subprocess_finds_the_emulator_through_kubeconfig(
        emulator: Emulator, kube: KubeClient, tmp_path: Path) -> None:
    source = tmp_path / "operator.py"
    source.write_text(SUBPROCESS_OPERATOR)
    log = tmp_path / "operator.log"
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kopf", "run", "--standalone", "--namespace=default", str(source),
            env={**os.environ, "KUBECONFIG": str(emulator.kubeconfig)}, stdout=output, stderr=output)
    try:
        await kube.create(*JOBS, job("beta"))
        await wait_for(lambda: kube.get("v1", "configmaps", "beta-config"), WAIT_S,
                       f"the kopf process did not create the config map:\n{log.read_text()[-3000:]}")
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), WAIT_S)


async def _absent(kube: KubeClient, api_version: str, plural: str, name: str) -> bool:
    return await kube.get(api_version, plural, name) is None


async def test_server_side_metadata(kube: KubeClient) -> None:
    first = await kube.create("v1", "events", {"metadata": {"generateName": "ev-"}, "reason": "A"})
    second = await kube.create("v1", "events", {"metadata": {"generateName": "ev-"}, "reason": "B"})
    assert first["metadata"]["name"] != second["metadata"]["name"]

    created = await kube.create(*JOBS, job("meta"))
    meta = created["metadata"]
    assert meta["namespace"] == "default" and meta["uid"] and meta["creationTimestamp"]
    assert meta["generation"] == 1

    labelled = await kube.patch(*JOBS, "meta", {"metadata": {"labels": {"x": "1"}}})
    assert labelled["metadata"]["generation"] == 1
    assert int(labelled["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    respecced = await kube.patch(*JOBS, "meta", task("gpt"))
    assert respecced["metadata"]["generation"] == 2
    json_patched = await kube.patch(*JOBS, "meta", [{"op": "replace", "path": "/spec/workload/builtin/task",
                                                     "value": "digits"}])
    assert json_patched["metadata"]["generation"] == 3

    with pytest.raises(ApiError) as conflict:
        await kube.create(*JOBS, job("meta"))
    assert conflict.value.status == 409


async def test_status_subresource_is_isolated(kube: KubeClient) -> None:
    await kube.create(*JOBS, job("iso"))
    await kube.patch(*JOBS, "iso", {**task("gpt"), "status": {"phase": "Running"}}, subresource="status")
    await kube.patch(*JOBS, "iso", {"status": {"phase": "Failed"}})
    body = await kube.get(*JOBS, "iso")
    assert body is not None
    assert body["spec"]["workload"] == {"builtin": {"task": "digits", "epochs": 1, "batchSize": 64,
                                                    "learningRate": 0.001, "seed": 0, "precision": "auto"}}
    assert body["status"]["phase"] == "Running"


async def test_label_and_field_selectors(kube: KubeClient) -> None:
    await kube.create(*JOBS, job("a", team="x", tier="gold"))
    await kube.create(*JOBS, job("b", team="y"))
    await kube.create(*JOBS, job("c"))

    async def names(**selectors: str) -> set[str]:
        return {item["metadata"]["name"] for item in await kube.list(*JOBS, **selectors)}

    assert await names() == {"a", "b", "c"}
    assert await names(label_selector="team=x") == {"a"}
    assert await names(label_selector="team!=x") == {"b", "c"}
    assert await names(label_selector="team in (x, y),!tier") == {"b"}
    assert await names(label_selector="team") == {"a", "b"}
    assert await names(label_selector="team notin (x)") == {"b", "c"}
    assert await names(field_selector="metadata.name=c") == {"c"}
    with pytest.raises(ApiError):
        await names(label_selector="team=(x")


async def test_watch_honours_the_label_selector(emulator: Emulator, kube: KubeClient) -> None:
    await kube.create(*JOBS, job("seen", team="x"))
    await kube.create(*JOBS, job("hidden", team="y"))
    url = f"{emulator.url}/apis/bigmodel.dev/v1alpha1/namespaces/default/bigmodeljobs"
    async with kube_stream(url, "team=x") as lines:
        first = await asyncio.wait_for(lines.readline(), WAIT_S)
        await kube.create(*JOBS, job("later-hidden", team="y"))
        await kube.create(*JOBS, job("later-seen", team="x"))
        second = await asyncio.wait_for(lines.readline(), WAIT_S)
    assert b'"seen"' in first and b'"later-seen"' in second


@contextlib.asynccontextmanager
async def kube_stream(url: str, label_selector: str) -> AsyncIterator[aiohttp.StreamReader]:
    async with aiohttp.ClientSession() as session, session.get(
            url, params={"watch": "true", "labelSelector": label_selector}) as response:
        yield response.content


async def test_owner_references_are_garbage_collected(kube: KubeClient) -> None:
    owner = await kube.create(*JOBS, job("owner"))
    reference = {"apiVersion": "bigmodel.dev/v1alpha1", "kind": "BigModelJob", "name": "owner",
                 "uid": owner["metadata"]["uid"]}
    await kube.create("v1", "configmaps", {"metadata": {"name": "owned", "ownerReferences": [reference]}})
    await kube.create("v1", "configmaps", {"metadata": {"name": "kept", "finalizers": ["test/keep"],
                                                        "ownerReferences": [reference]}})
    await kube.delete(*JOBS, "owner")
    await wait_for(lambda: _absent(kube, "v1", "configmaps", "owned"), WAIT_S, "the owned object was not collected")
    kept = await wait_for(lambda: _deleting(kube, "kept"), WAIT_S, "the finalized owned object was not marked")
    assert kept["metadata"]["finalizers"] == ["test/keep"]


async def test_faults_leave_the_garbage_collector_alone(emulator: Emulator, kube: KubeClient) -> None:
    owner = await kube.create("v1", "configmaps", {"metadata": {"name": "owner"}})
    reference = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
    await kube.create("v1", "configmaps", {"metadata": {"name": "owned", "ownerReferences": [reference]}})
    refusal = emulator.faults.add(Fault(method="DELETE", name="owned", code=500, tooling=True))
    with pytest.raises(ApiError) as refused:
        await kube.delete("v1", "configmaps", "owned")
    assert refused.value.status == 500 and refusal.hits == 1
    await kube.delete("v1", "configmaps", "owner")
    await wait_for(lambda: _absent(kube, "v1", "configmaps", "owned"), WAIT_S, "a fault stopped the collector")
    assert refusal.hits == 1


async def test_a_bound_pod_stays_terminating_until_finished(emulator: Emulator, kube: KubeClient) -> None:
    await kube.create("v1", "pods", {"metadata": {"name": "p"}, "spec": {"containers": []}})
    await kube.bind("p", "node-a")
    await kube.delete("v1", "pods", "p")
    body = await kube.get("v1", "pods", "p")
    assert body is not None and body["spec"]["nodeName"] == "node-a" and body["metadata"]["deletionTimestamp"]
    emulator.finish_termination("default", "p")
    assert await kube.get("v1", "pods", "p") is None


async def _deleting(kube: KubeClient, name: str) -> dict[str, Any] | None:
    body = await kube.get("v1", "configmaps", name)
    return body if body and body["metadata"].get("deletionTimestamp") else None


def test_the_kubeconfig_works_with_the_kubernetes_client(emulator: Emulator) -> None:
    api = kubernetes.client.CoreV1Api(kubernetes.config.new_client_from_config(config_file=str(emulator.kubeconfig)))
    api.create_namespaced_pod("default", kubernetes.client.V1Pod(
        metadata=kubernetes.client.V1ObjectMeta(name="p", labels={"app": "a"}),
        spec=kubernetes.client.V1PodSpec(containers=[kubernetes.client.V1Container(name="c", image="busybox")])))
    listed = api.list_namespaced_pod("default", label_selector="app=a").items
    assert [pod.metadata.name for pod in listed if pod.metadata] == ["p"]
    assert api.list_namespaced_pod("default", label_selector="app=b").items == []
    api.delete_namespaced_pod("p", "default")
    assert api.list_namespaced_pod("default").items == []


async def test_put_conflicts_and_error_statuses(emulator: Emulator, kube: KubeClient) -> None:
    created = await kube.create(*JOBS, job("put"))
    path = "/apis/bigmodel.dev/v1alpha1/namespaces/default/bigmodeljobs/put"
    async with aiohttp.ClientSession(emulator.url) as session:
        async with session.put(path, json={**created, **task("gpt")}) as response:
            assert response.status == 200
            replaced = await response.json()
        assert replaced["spec"]["workload"]["builtin"]["task"] == "gpt" and replaced["metadata"]["generation"] == 2
        async with session.put(path, json=created) as response:  # the resourceVersion it read is stale now
            assert response.status == 409
            assert (await response.json())["reason"] == "Conflict"
        async with session.get(path + "-missing") as response:
            assert response.status == 404
            assert await response.json() == {
                "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "code": 404,
                "reason": "NotFound", "message": 'bigmodeljobs.bigmodel.dev "put-missing" not found'}
    with pytest.raises(ApiError) as stale:
        await kube.patch(*JOBS, "put", {"metadata": {"resourceVersion": created["metadata"]["resourceVersion"]}})
    assert stale.value.status == 409


async def test_documented_gaps_are_real(emulator: Emulator, kube: KubeClient) -> None:
    """The gaps the API server's docstring lists: if one of these starts failing, update the docstring."""
    await kube.create(*JOBS, job("gaps"))
    await kube.create("v1", "configmaps", {"metadata": {"name": "c"}}, namespace="nowhere")  # no namespace lifecycle
    for name in ("c1", "c2"):
        await kube.create("v1", "configmaps", {"metadata": {"name": name}})
    await kube.create("v1", "pods", {"metadata": {"name": "p"}, "spec": {"containers": [], "nodeName": "n"}})
    await kube.delete("v1", "pods", "p", grace_period_seconds=1)
    await asyncio.sleep(1.5)
    assert await kube.get("v1", "pods", "p") is not None  # no node controller forces a deletion past its deadline

    async with aiohttp.ClientSession(emulator.url) as session:
        async with session.get("/api/v1/namespaces/default/configmaps", params={"limit": "1"}) as response:
            assert len((await response.json())["items"]) == 2  # no pagination
        path = "/apis/bigmodel.dev/v1alpha1/namespaces/default/bigmodeljobs"
        async with session.patch(f"{path}/gaps", data="spec: {}",
                                 headers={"Content-Type": "application/apply-patch+yaml"}) as response:
            assert response.status == 415  # no server-side apply
        async with session.delete(path) as response:
            assert response.status == 405  # no deletecollection
        async with session.post("/api/v1/namespaces", json={"metadata": {"name": "other"}}) as response:
            assert response.status == 405  # namespaces are read-only
