"""The API emulator behaves enough like a Kubernetes API server for Kopf and the `kubernetes` client."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf
import kubernetes
import pytest
from kopf.testing import KopfRunner

from tests.support.emulator import ApiError, Emulator, KubeClient, wait_for

JOBS = ("bigmodel.dev/v1alpha1", "bigmodeljobs")
WAIT_S = 15.0


def job(name: str, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "bigmodel.dev/v1alpha1",
        "kind": "BigModelJob",
        "metadata": {"name": name, "labels": labels},
        "spec": {"task": "digits"},
    }


def tiny_operator() -> kopf.OperatorRegistry:
    """A Kopf operator that gives every BigModelJob an owned ConfigMap, an Event, and a finalizer."""
    registry = kopf.OperatorRegistry()

    @kopf.on.create("bigmodel.dev", "v1alpha1", "bigmodeljobs", id="child", registry=registry)
    def create_child(body: kopf.Body, name: str, namespace: str, **_: Any) -> dict[str, str]:
        config_map: dict[str, Any] = {"metadata": {"name": f"{name}-config"}, "data": {"job": name}}
        kopf.adopt(config_map, owner=body)
        kubernetes.client.CoreV1Api().create_namespaced_config_map(namespace, config_map)
        kopf.info(body, reason="ChildCreated", message=f"config map {name}-config")
        return {"configMap": f"{name}-config"}

    @kopf.on.delete("bigmodel.dev", "v1alpha1", "bigmodeljobs", id="goodbye", registry=registry)
    def say_goodbye(**_: Any) -> None:
        logging.getLogger(__name__).info("deleted")

    return registry


def operator_settings() -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    settings.persistence.finalizer = "bigmodel.dev/finalizer"
    settings.posting.level = logging.INFO
    # The emulator's watch streams never end by themselves; a short server timeout keeps the shutdown quick.
    settings.watching.server_timeout = 5
    return settings


async def test_kopf_operator_reconciles_against_the_emulator(emulator: Emulator, kube: KubeClient) -> None:
    with KopfRunner(
        ["run", "--standalone", "--namespace=default", "--verbose"],
        registry=tiny_operator(),
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

        async def handler_result_in_status() -> dict[str, Any] | None:
            body = await kube.get(*JOBS, "alpha")
            return body if body and body.get("status", {}).get("child") else None

        done = await wait_for(handler_result_in_status, WAIT_S, "Kopf did not store the handler result in status")
        assert done["status"]["child"] == {"configMap": "alpha-config"}
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
    respecced = await kube.patch(*JOBS, "meta", {"spec": {"task": "gpt"}})
    assert respecced["metadata"]["generation"] == 2
    json_patched = await kube.patch(*JOBS, "meta", [{"op": "replace", "path": "/spec/task", "value": "digits"}])
    assert json_patched["metadata"]["generation"] == 3

    with pytest.raises(ApiError) as conflict:
        await kube.create(*JOBS, job("meta"))
    assert conflict.value.status == 409


async def test_status_subresource_is_isolated(kube: KubeClient) -> None:
    await kube.create(*JOBS, job("iso"))
    await kube.patch(*JOBS, "iso", {"spec": {"task": "gpt"}, "status": {"phase": "Ignored"}},
                     subresource="status")
    await kube.patch(*JOBS, "iso", {"status": {"phase": "AlsoIgnored"}})
    body = await kube.get(*JOBS, "iso")
    assert body is not None
    assert body["spec"] == {"task": "digits"}
    assert body["status"] == {"phase": "Ignored"}


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


def kube_stream(url: str, label_selector: str) -> Any:
    import contextlib

    import aiohttp

    @contextlib.asynccontextmanager
    async def stream() -> Any:
        async with aiohttp.ClientSession() as session, session.get(
                url, params={"watch": "true", "labelSelector": label_selector}) as response:
            yield response.content

    return stream()


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


async def _deleting(kube: KubeClient, name: str) -> dict[str, Any] | None:
    body = await kube.get("v1", "configmaps", name)
    return body if body and body["metadata"].get("deletionTimestamp") else None


def test_the_kubeconfig_works_with_the_kubernetes_client(emulator: Emulator) -> None:
    api = kubernetes.client.CoreV1Api(kubernetes.config.new_client_from_config(config_file=str(emulator.kubeconfig)))
    api.create_namespaced_pod("default", {"metadata": {"name": "p", "labels": {"app": "a"}},
                                          "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
    assert [pod.metadata.name for pod in api.list_namespaced_pod("default", label_selector="app=a").items] == ["p"]
    assert api.list_namespaced_pod("default", label_selector="app=b").items == []
    api.delete_namespaced_pod("p", "default")
    assert api.list_namespaced_pod("default").items == []
