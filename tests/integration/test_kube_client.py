"""The operator's Kubernetes client against the emulator: reads from its caches, writes into them, honest creates."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import kubernetes.client
import pytest

from bigmodel.api import wire
from bigmodel.controller.cache import ObjectCache
from bigmodel.controller.kube import PODS, SERVICES, KubeClient, KubeError
from tests.integration.test_job_operator import JOBS, job_manifest
from tests.support.emulator import Emulator
from tests.support.emulator import KubeClient as ApiClient

NAMESPACE = "default"
LABELS = {wire.MANAGED_BY_LABEL: wire.OPERATOR_NAME, wire.JOB_LABEL: "demo"}


def pod(name: str, owner: dict[str, Any], **spec: Any) -> dict[str, Any]:
    reference = {"apiVersion": wire.API_VERSION, "kind": wire.JOB_KIND, "name": owner["metadata"]["name"]}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": LABELS,
            "ownerReferences": [reference | {"uid": owner["metadata"]["uid"], "controller": True}],
        },
        "spec": {"containers": [{"name": "ray", "image": "ray"}], **spec},
    }


def children_cache() -> ObjectCache:
    return ObjectCache({wire.MANAGED_BY_LABEL: wire.OPERATOR_NAME}, wire.OWNER_LABEL.values())


@pytest.fixture()
async def cache() -> ObjectCache:
    return children_cache()


@pytest.fixture()
async def client(emulator: Emulator, cache: ObjectCache) -> AsyncIterator[KubeClient]:
    configuration = kubernetes.client.Configuration()
    configuration.host = emulator.url
    async with KubeClient(configuration, {PODS: cache, SERVICES: children_cache()}) as operator_client:
        yield operator_client


async def owner(kube: ApiClient, name: str = "demo") -> dict[str, Any]:
    """A job to own the pods: the emulator collects pods whose owner does not exist."""
    return await kube.create(*JOBS, job_manifest(name))


async def test_a_create_that_finds_its_own_object_takes_it(kube: ApiClient, client: KubeClient) -> None:
    job = await owner(kube)
    await kube.create("v1", "pods", pod("demo-g1-head", job))
    await client.create(PODS, NAMESPACE, pod("demo-g1-head", job))
    assert await kube.get("v1", "pods", "demo-g1-head") is not None


async def test_a_create_that_finds_another_owners_object_says_whose(kube: ApiClient, client: KubeClient) -> None:
    job, other = await owner(kube), await owner(kube, "other")
    await kube.create("v1", "pods", pod("demo-g1-head", other))
    with pytest.raises(KubeError) as raised:
        await client.create(PODS, NAMESPACE, pod("demo-g1-head", job))
    assert raised.value.status == 409
    message = str(raised.value)
    assert "\n" not in message and f"BigModelJob other (uid {other['metadata']['uid']})" in message, message
    assert message.endswith("not to BigModelJob demo"), message


async def test_a_create_that_finds_an_unowned_object_says_so(kube: ApiClient, client: KubeClient) -> None:
    job = await owner(kube)
    squatter = pod("demo-g1-head", job)
    del squatter["metadata"]["ownerReferences"]
    await kube.create("v1", "pods", squatter)
    with pytest.raises(KubeError, match="belongs to no owner"):
        await client.create(PODS, NAMESPACE, pod("demo-g1-head", job))


async def test_a_create_that_finds_its_own_object_terminating_fails(kube: ApiClient, client: KubeClient) -> None:
    job = await owner(kube)
    # Bound to a node, a deleted pod stays Terminating until its kubelet says the containers stopped.
    await kube.create("v1", "pods", pod("demo-g1-head", job, nodeName="node-1"))
    await kube.delete("v1", "pods", "demo-g1-head")
    with pytest.raises(KubeError, match="is terminating") as raised:
        await client.create(PODS, NAMESPACE, pod("demo-g1-head", job))
    assert raised.value.status == 409


async def test_reads_come_from_the_cache_once_it_covers_the_namespace(
    emulator: Emulator, kube: ApiClient, client: KubeClient, cache: ObjectCache
) -> None:
    job = await owner(kube)
    await client.create(PODS, NAMESPACE, pod("demo-g1-head", job))
    calls = len(emulator.operator_calls())
    assert [p["metadata"]["name"] for p in await client.list(PODS, NAMESPACE, LABELS)] == ["demo-g1-head"]
    assert len(emulator.operator_calls()) == calls + 1, "before the cache covers the namespace, the API answers"

    cache.replace(NAMESPACE, [], "0")  # a listing older than the create: the cache keeps what the create answered
    calls = len(emulator.operator_calls())
    assert [p["metadata"]["name"] for p in await client.list(PODS, NAMESPACE, LABELS)] == ["demo-g1-head"]
    assert len(emulator.operator_calls()) == calls, "a covered namespace is answered from memory"


async def test_every_write_goes_into_the_cache(kube: ApiClient, client: KubeClient, cache: ObjectCache) -> None:
    job = await owner(kube)
    cache.cover(NAMESPACE)
    await client.create(PODS, NAMESPACE, pod("demo-g1-head", job))
    await client.create(PODS, NAMESPACE, pod("demo-g1-w0", job, nodeName="node-1"))
    await client.patch(PODS, NAMESPACE, "demo-g1-head", {"metadata": {"annotations": {"seen": "yes"}}})
    head = cache.get(NAMESPACE, "demo-g1-head")
    assert head is not None and head["metadata"]["annotations"] == {"seen": "yes"}

    await client.delete(PODS, NAMESPACE, "demo-g1-head")  # not bound: gone at once
    await client.delete(PODS, NAMESPACE, "demo-g1-w0")  # bound: Terminating
    assert [p["metadata"]["name"] for p in await client.list(PODS, NAMESPACE, LABELS)] == ["demo-g1-w0"]
    worker = cache.get(NAMESPACE, "demo-g1-w0")
    assert worker is not None and worker["metadata"].get("deletionTimestamp")

    await kube.delete("v1", "pods", "demo-g1-w0", grace_period_seconds=0)  # the kubelet is done with it
    await client.delete(PODS, NAMESPACE, "demo-g1-w0")  # 404: already gone, and forgotten
    assert await client.list(PODS, NAMESPACE, LABELS) == []
