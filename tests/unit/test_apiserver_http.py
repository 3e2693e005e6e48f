"""The in-memory API server over HTTP, in this test's event loop: routes, request bodies, and who is asking."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.support.apiserver import KUBELET_USER_AGENT, PODS, ApiServer

POD_PATH = "/api/v1/namespaces/default/pods"
KUBELET = {"User-Agent": KUBELET_USER_AGENT}


@pytest.fixture()
def server() -> ApiServer:
    return ApiServer()


@pytest.fixture()
async def client(server: ApiServer) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(server.application())) as running:
        yield running


def pod(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"containers": [{"name": "main", "image": "python"}]}}


def binding(name: str, node: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node}}


async def answer(client: TestClient[Any, Any], method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with client.request(method, path, **kwargs) as response:
        return response.status, await response.json()


async def test_a_pod_is_bound_through_its_binding_subresource(client: TestClient[Any, Any]) -> None:
    await answer(client, "POST", POD_PATH, json=pod("p"))
    code, status = await answer(client, "POST", f"{POD_PATH}/p/binding", json=binding("p", "node-a"))
    assert (code, status["kind"], status["status"]) == (201, "Status", "Success")
    assert (await answer(client, "GET", f"{POD_PATH}/p"))[1]["spec"]["nodeName"] == "node-a"
    code, conflict = await answer(client, "POST", f"{POD_PATH}/p/binding", json=binding("p", "node-b"))
    assert code == 409 and conflict["reason"] == "Conflict"
    code, missing = await answer(client, "POST", f"{POD_PATH}/p/binding", json={"kind": "Binding"})
    assert code == 422 and missing["details"]["causes"][0]["field"] == "target.name"
    assert (await answer(client, "GET", f"{POD_PATH}/p/binding"))[0] == 405
    assert (await answer(client, "POST", "/api/v1/namespaces/default/configmaps/c/binding", json={}))[0] == 404
    _, discovery = await answer(client, "GET", "/api/v1")
    assert {"name": "pods/binding", "singularName": "", "namespaced": True, "kind": "Binding",
            "verbs": ["create"]} in discovery["resources"]


async def test_a_delete_reads_its_options_from_the_body_or_the_query(client: TestClient[Any, Any]) -> None:
    for name in ("a", "b", "c"):
        await answer(client, "POST", POD_PATH, json={**pod(name), "spec": {**pod(name)["spec"], "nodeName": "n"}})
    code, terminating = await answer(client, "DELETE", f"{POD_PATH}/a", json={"gracePeriodSeconds": 3})
    assert code == 200 and terminating["metadata"]["deletionGracePeriodSeconds"] == 3
    assert (await answer(client, "DELETE", f"{POD_PATH}/b", params={"gracePeriodSeconds": "0"}))[0] == 200
    assert (await answer(client, "GET", f"{POD_PATH}/b"))[0] == 404
    code, precondition = await answer(client, "DELETE", f"{POD_PATH}/c", json={"preconditions": {"uid": "other"}})
    assert code == 409 and precondition["reason"] == "Conflict"
    assert (await answer(client, "DELETE", f"{POD_PATH}/c"))[1]["metadata"]["deletionGracePeriodSeconds"] == 30


async def test_a_lost_node_kubelet_is_never_heard(server: ApiServer, client: TestClient[Any, Any]) -> None:
    for name in ("on-lost", "elsewhere", "new"):
        await answer(client, "POST", POD_PATH, json=pod(name))
    await answer(client, "POST", f"{POD_PATH}/on-lost/binding", json=binding("on-lost", "lost"), headers=KUBELET)
    await answer(client, "POST", f"{POD_PATH}/elsewhere/binding", json=binding("elsewhere", "fine"), headers=KUBELET)
    server.lost_nodes.add("lost")

    code, refusal = await answer(client, "PATCH", f"{POD_PATH}/on-lost/status", json={"status": {"phase": "Failed"}},
                                 headers={**KUBELET, "Content-Type": "application/merge-patch+json"})
    assert code == 503 and refusal["reason"] == "ServiceUnavailable"
    await answer(client, "DELETE", f"{POD_PATH}/on-lost")
    assert (await answer(client, "DELETE", f"{POD_PATH}/on-lost", json={"gracePeriodSeconds": 0},
                         headers=KUBELET))[0] == 503
    assert server.store.get(PODS, "default", "on-lost")["metadata"]["deletionTimestamp"]  # Terminating for ever
    assert (await answer(client, "POST", f"{POD_PATH}/new/binding", json=binding("new", "lost"), headers=KUBELET))[
        0] == 503
    assert (await answer(client, "DELETE", f"{POD_PATH}/elsewhere", json={"gracePeriodSeconds": 0},
                         headers=KUBELET))[0] == 200  # other nodes' kubelets are heard
    # Anyone else is heard: a force delete (grace period 0) removes the pod, as on a real server.
    assert (await answer(client, "DELETE", f"{POD_PATH}/on-lost", json={"gracePeriodSeconds": 0}))[0] == 200
    assert (await answer(client, "GET", f"{POD_PATH}/on-lost"))[0] == 404
