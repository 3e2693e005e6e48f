"""Clients of a BigModelService's Service on the local kubelet: steady requests spread over the ready pods behind it.

The local kubelet has no kube-proxy: every pod is 127.0.0.1 at host ports of its own. ServiceEndpoints plays it, and is
the one seam here: the pods the Service selects that are Ready and not Terminating, read from the API emulator, each
at the host port the kubelet gave its serve port (LocalKubelet.host_port), as a real kube-proxy learns them from the
Service's EndpointSlices.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bigmodel.api.wire import SERVE_PORT
from tests.support.emulator import KubeClient
from tests.support.kubelet import LocalKubelet

REQUEST_TIMEOUT_S = 10.0


def is_ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


class ServiceEndpoints:
    """The ready pods behind the Service `<service>-serve`: the test's kube-proxy."""

    def __init__(self, kube: KubeClient, kubelet: LocalKubelet, service: str) -> None:
        self._kube = kube
        self._kubelet = kubelet
        self._service = service

    async def ready(self) -> dict[str, int]:
        """Pod name -> host port of each ready pod behind the Service."""
        found = await self._kube.get("v1", "services", f"{self._service}-serve")
        if found is None:
            return {}
        selector = ",".join(f"{key}={value}" for key, value in found["spec"]["selector"].items())
        pods = await self._kube.list("v1", "pods", label_selector=selector)
        return {
            pod["metadata"]["name"]: self._kubelet.host_port(pod["metadata"]["name"], SERVE_PORT)
            for pod in pods
            if not pod["metadata"].get("deletionTimestamp") and is_ready(pod)
        }


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


async def steady_load(
    endpoints: ServiceEndpoints, path: str, body: Any, rate: float, traffic: Traffic, stop: asyncio.Event
) -> None:
    """`rate` POSTs of `body` to `path` a second, each to the next ready pod in turn (as kube-proxy's round robin),
    answered or not, until `stop`; then waits for those in flight."""
    turn = itertools.count()
    pending: set[asyncio.Task[None]] = set()

    async def send(session: aiohttp.ClientSession, request: Request, port: int) -> None:
        try:
            async with session.post(f"http://127.0.0.1:{port}{path}", json=body) as response:
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
            await asyncio.sleep(1 / rate)
        await asyncio.gather(*pending, return_exceptions=True)
