"""The in-memory API server over HTTP, in this test's event loop: routes, request bodies, and who is asking."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.support.apiserver import KUBELET_USER_AGENT, PODS, ApiServer
from tests.support.faults import Fault

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
    return {
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": name},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    }


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
    assert {
        "name": "pods/binding",
        "singularName": "",
        "namespaced": True,
        "kind": "Binding",
        "verbs": ["create"],
    } in discovery["resources"]


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

    code, refusal = await answer(
        client,
        "PATCH",
        f"{POD_PATH}/on-lost/status",
        json={"status": {"phase": "Failed"}},
        headers={**KUBELET, "Content-Type": "application/merge-patch+json"},
    )
    assert code == 503 and refusal["reason"] == "ServiceUnavailable"
    await answer(client, "DELETE", f"{POD_PATH}/on-lost")
    assert (await answer(client, "DELETE", f"{POD_PATH}/on-lost", json={"gracePeriodSeconds": 0}, headers=KUBELET))[
        0
    ] == 503
    assert server.store.get(PODS, "default", "on-lost")["metadata"]["deletionTimestamp"]  # Terminating for ever
    assert (await answer(client, "POST", f"{POD_PATH}/new/binding", json=binding("new", "lost"), headers=KUBELET))[
        0
    ] == 503
    assert (await answer(client, "DELETE", f"{POD_PATH}/elsewhere", json={"gracePeriodSeconds": 0}, headers=KUBELET))[
        0
    ] == 200  # other nodes' kubelets are heard
    # Anyone else is heard: a force delete (grace period 0) removes the pod, as on a real server.
    assert (await answer(client, "DELETE", f"{POD_PATH}/on-lost", json={"gracePeriodSeconds": 0}))[0] == 200
    assert (await answer(client, "GET", f"{POD_PATH}/on-lost"))[0] == 404


async def test_a_fault_answers_with_a_real_servers_status(server: ApiServer, client: TestClient[Any, Any]) -> None:
    quota = server.faults.add(Fault(method="POST", plural="pods", code=403, times=2))
    code, refusal = await answer(client, "POST", POD_PATH, json=pod("p"))
    assert (code, refusal["reason"]) == (403, "Forbidden")
    assert refusal["message"] == (
        'pods "p" is forbidden: exceeded quota: gpu-quota, requested: nvidia.com/gpu=1, '
        "used: nvidia.com/gpu=8, limited: nvidia.com/gpu=8"
    )
    assert (await answer(client, "POST", POD_PATH, json=pod("tooling"), headers=KUBELET))[0] == 201  # left alone
    assert (await answer(client, "POST", POD_PATH, json=pod("p")))[0] == 403
    assert (await answer(client, "POST", POD_PATH, json=pod("p")))[0] == 201  # the rule is spent
    assert quota.hits == 2 and [entry.call.name for entry in server.faults.injected()] == ["p", "p"]
    assert server.store.get(PODS, "default", "p")  # nothing refused reached the store, the rest did


@pytest.mark.parametrize(
    ("code", "reason", "words"),
    [
        (409, "Conflict", 'Operation cannot be fulfilled on pods "p": the object has been modified'),
        (422, "Invalid", 'admission webhook "deny.tests.bigmodel.dev" denied the request: '),
        (429, "TooManyRequests", "Too many requests, please try again later."),
        (500, "InternalError", "Internal error occurred: "),
        (503, "ServiceUnavailable", "the server is currently unable to handle the request"),
    ],
)
async def test_each_fault_code_in_a_real_servers_words(
    server: ApiServer, client: TestClient[Any, Any], code: int, reason: str, words: str
) -> None:
    await answer(client, "POST", POD_PATH, json=pod("p"))
    server.faults.add(Fault(method="PATCH", subresource="status", code=code, retry_after_s=3))
    async with client.patch(
        f"{POD_PATH}/p/status",
        json={"status": {"phase": "Running"}},
        headers={"Content-Type": "application/merge-patch+json"},
    ) as response:
        status = await response.json()
        assert (response.status, status["kind"], status["code"], status["reason"]) == (code, "Status", code, reason)
        assert status["message"].startswith(words), status["message"]
        assert response.headers.get("Retry-After") == ("3" if code == 429 else None)
    assert (
        await answer(
            client,
            "PATCH",
            f"{POD_PATH}/p",
            json={"metadata": {"labels": {"a": "b"}}},
            headers={"Content-Type": "application/merge-patch+json"},
        )
    )[0] == 200  # not the status


async def test_a_fault_may_answer_late_or_differently(server: ApiServer, client: TestClient[Any, Any]) -> None:
    await answer(client, "POST", POD_PATH, json=pod("p"))
    server.faults.add(Fault(verb="get", delay_s=0.3, times=1))
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert (await answer(client, "GET", f"{POD_PATH}/p"))[0] == 200
    assert loop.time() - started >= 0.3
    server.faults.add(Fault(verb="list", code=500, reason="Custom", message="said otherwise"))
    code, status = await answer(client, "GET", POD_PATH)
    assert (code, status["reason"], status["message"]) == (500, "Custom", "said otherwise")


async def test_drop_watch_cuts_new_and_open_streams(server: ApiServer, client: TestClient[Any, Any]) -> None:
    for name in ("a", "b", "c"):
        await answer(client, "POST", POD_PATH, json=pod(name))
    rule = server.faults.add(Fault(plural="pods", drop_watch=2, times=1))
    async with client.get(POD_PATH, params={"watch": "true"}) as response:
        lines = (await asyncio.wait_for(response.read(), 5)).splitlines()
    assert [json.loads(line)["object"]["metadata"]["name"] for line in lines] == ["a", "b"]  # then cut
    assert rule.hits == 1

    async with client.get(POD_PATH, params={"watch": "true"}) as response:
        for _ in range(3):
            await asyncio.wait_for(response.content.readline(), 5)  # the three ADDED: the stream is open and idle
        server.faults.add(Fault(plural="pods", drop_watch=0))
        assert await asyncio.wait_for(response.content.read(), 5) == b""  # cut at once
