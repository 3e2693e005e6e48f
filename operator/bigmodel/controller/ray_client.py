"""The operator's one way to Ray: job submit/status/stop and Serve deploy/status on the head's dashboard, the
cluster's nodes, and a training driver's progress; every call carries the cluster's token.

`RayClient` is the seam tests substitute; `HttpRayClient` speaks Ray's Job Submission, Serve and State REST APIs.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Protocol

import aiohttp
from pydantic import ValidationError

from bigmodel.api.traffic import TrafficReport, TrafficSetting
from bigmodel.api.training_report import TrainingReport
from bigmodel.api.wire import BEARER_PREFIX, CANARY_APP_SUFFIX, CANNOT_RUN_MARKER, FAILURE_MARKER, TRAFFIC_PATH
from bigmodel.builders.ray_cluster import dashboard_url, progress_url, serve_url
from bigmodel.controller.cluster_tokens import ClusterTokens
from bigmodel.reconcile.failure_text import failure_summary
from bigmodel.reconcile.job_observed import RayJobView
from bigmodel.reconcile.observed import RayHead
from bigmodel.reconcile.service_observed import Demand, RayClusterView, ServeAppView

log = logging.getLogger(__name__)

MAX_ANSWER_BYTES = 8 * 1024 * 1024
"""The most the operator reads of one answer from a Ray head. A head runs the tenant's code (a `command` workload
may serve anything on the progress port), so an answer must never be able to exhaust the operator's memory, which
every namespace shares."""
MAX_REPORT_BYTES = 256 * 1024


class RayError(RuntimeError):
    """A Ray call that did not do what was asked."""


class RayUnreachable(RayError):
    """The head's dashboard did not answer: the head is starting, or the network is in the way."""


class RayRefused(RayError):
    """Ray answered, and said no."""


class RayTokenRefused(RayRefused):
    """Ray refused the cluster's token (401 or 403): the cluster was made with another key, or by someone else."""


class RayClient(Protocol):
    async def submit(self, head: RayHead, submission: dict[str, Any]) -> None: ...

    async def job(self, head: RayHead, submission_id: str) -> RayJobView | None: ...

    async def stop(self, head: RayHead, submission_id: str) -> None: ...

    async def report(self, head: RayHead) -> TrainingReport | None: ...

    async def deploy_serve(self, head: RayHead, config: dict[str, Any]) -> None: ...

    async def serve_state(self, head: RayHead, app_name: str) -> RayClusterView: ...

    async def traffic(self, head: RayHead) -> TrafficReport: ...

    async def set_traffic(self, head: RayHead, setting: TrafficSetting) -> None: ...

    async def close(self) -> None: ...


class HttpRayClient:
    def __init__(self, tokens: ClusterTokens, timeout_s: float = 5.0) -> None:
        self._tokens = tokens
        # Answers are taken as sent (no decompression) and only uncompressed ones are read: a small compressed
        # answer can expand a thousandfold, past any bound on what is read.
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            auto_decompress=False,
            headers={"Accept-Encoding": "identity"},
        )

    async def close(self) -> None:
        await self._session.close()

    async def _request(
        self, head: RayHead, method: str, url: str, body: Any = None, limit: int = MAX_ANSWER_BYTES
    ) -> tuple[int, Any]:
        """The status and JSON (or text) of one call, reading at most `limit` bytes within the session's timeout."""
        headers = {"Authorization": BEARER_PREFIX + self._tokens.of(head)}
        try:
            async with self._session.request(method, url, json=body, headers=headers) as response:
                encoding = response.headers.get("Content-Encoding", "identity").lower()
                if encoding != "identity":
                    raise RayRefused(f"{method} {url}: answered with Content-Encoding {encoding}, which was not asked")
                raw = await _read_at_most(response.content, limit + 1)
                if len(raw) > limit:
                    raise RayRefused(f"{method} {url}: the answer is over {limit} bytes")
                if response.status in (401, 403):
                    raise RayTokenRefused(f"{method} {url}: HTTP {response.status}: the cluster refused its token")
                return response.status, _payload(raw.decode(errors="replace"))
        except (aiohttp.ClientError, TimeoutError) as error:
            raise RayUnreachable(f"{method} {url}: {error}") from error

    async def submit(self, head: RayHead, submission: dict[str, Any]) -> None:
        status, payload = await self._request(head, "POST", f"{dashboard_url(head.ip)}/api/jobs/", submission)
        # Ray answers 400 "already exists" to a repeated submission id: the run we want is there.
        if status >= 400 and "already exists" not in str(payload):
            raise RayRefused(f"Ray refused job {submission['submission_id']}: HTTP {status}: {payload}")

    async def job(self, head: RayHead, submission_id: str) -> RayJobView | None:
        status, payload = await self._request(head, "GET", f"{dashboard_url(head.ip)}/api/jobs/{submission_id}")
        if status == 404:
            return None
        if status >= 400 or not isinstance(payload, dict):
            raise RayUnreachable(f"Ray job {submission_id}: HTTP {status}: {payload}")
        message = payload.get("message") or ""
        cannot_run = CANNOT_RUN_MARKER in message
        summary = failure_summary(message, CANNOT_RUN_MARKER if cannot_run else FAILURE_MARKER)
        return RayJobView(submission_id, payload["status"], summary, cannot_run=cannot_run)

    async def stop(self, head: RayHead, submission_id: str) -> None:
        await self._request(head, "POST", f"{dashboard_url(head.ip)}/api/jobs/{submission_id}/stop")

    async def report(self, head: RayHead) -> TrainingReport | None:
        """The driver's progress; None while the driver has not started serving it, or serves something else."""
        url = f"{progress_url(head.ip)}/progress"
        try:
            status, payload = await self._request(head, "GET", url, limit=MAX_REPORT_BYTES)
        except RayError as error:
            log.info("no progress report from %s: %s", head.ip, error)
            return None
        if status != 200 or not isinstance(payload, dict):
            return None
        try:
            return TrainingReport.model_validate(payload)
        except ValidationError as error:
            log.warning("ignoring an unreadable progress report from %s: %s", head.ip, error.errors()[0]["msg"])
            return None

    async def deploy_serve(self, head: RayHead, config: dict[str, Any]) -> None:
        """Declare the cluster's Serve applications; Serve converges to them (rolling replicas) in the background."""
        url = f"{dashboard_url(head.ip)}/api/serve/applications/"
        status, payload = await self._request(head, "PUT", url, config)
        if status >= 400:
            raise RayRefused(f"Ray Serve refused the config: HTTP {status}: {payload}")

    async def serve_state(self, head: RayHead, app_name: str) -> RayClusterView:
        serve = await self._get(head, "/api/serve/applications/")
        rows = state_rows(await self._get(head, "/api/v0/nodes?limit=10000"))
        # The autoscaler monitor that `ray start --head` runs reports what the scheduler cannot place and what every
        # node has in use: the signals Ray's own autoscaler scales on.
        status = (await self._get(head, "/api/cluster_status?format=0")).get("data") or {}
        report = (status.get("clusterStatus") or {}).get("loadMetricsReport") or {}
        names = {node["node_id"]: node.get("node_name") or "" for node in rows}
        usage = report.get("usageByNode") or {}
        apps = serve.get("applications") or {}
        app, canary = apps.get(app_name), apps.get(app_name + CANARY_APP_SUFFIX)
        return RayClusterView(
            reachable=True,
            app=app_view(app) if app else None,
            canary=app_view(canary) if canary else None,
            nodes=frozenset(node.get("node_name") or "" for node in rows if node.get("state") == "ALIVE"),
            busy=frozenset(names.get(node_id, "") for node_id, used in usage.items() if holds_compute(used)),
            demand=pending_demand(report.get("resourceDemand") or []),
        )

    async def traffic(self, head: RayHead) -> TrafficReport:
        """The canary split the proxies apply and their outcomes, from the guard of the head's Serve proxy."""
        return await self._traffic(head, "GET")

    async def set_traffic(self, head: RayHead, setting: TrafficSetting) -> None:
        await self._traffic(head, "PUT", setting.model_dump(mode="json"))

    async def _traffic(self, head: RayHead, method: str, body: Any = None) -> TrafficReport:
        url = f"{serve_url(head.ip)}{TRAFFIC_PATH}"
        status, payload = await self._request(head, method, url, body)
        if status >= 400 or not isinstance(payload, dict):
            raise RayUnreachable(f"{method} {TRAFFIC_PATH}: HTTP {status}: {payload}")
        try:
            return TrafficReport.model_validate(payload)
        except ValidationError as error:
            raise RayRefused(f"{method} {TRAFFIC_PATH}: not a traffic report: {error.errors()[0]['msg']}") from error

    async def _get(self, head: RayHead, path: str) -> dict[str, Any]:
        status, payload = await self._request(head, "GET", f"{dashboard_url(head.ip)}{path}")
        if status >= 400 or not isinstance(payload, dict):
            raise RayUnreachable(f"GET {path}: HTTP {status}: {payload}")
        return payload


async def _read_at_most(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """The answer's first `limit` bytes, or all of it when shorter."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await stream.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _payload(text: str) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def state_rows(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of a State API answer: {"data": {"result": {"result": [...]}}}."""
    return list(((payload.get("data") or {}).get("result") or {}).get("result") or [])


def holds_compute(usage: dict[str, Any]) -> bool:
    """usageByNode values are [used, total] per resource."""
    return any((usage.get(resource) or [0])[0] > 0 for resource in ("CPU", "GPU"))


def pending_demand(raw: list[Any]) -> Demand:
    """resourceDemand is [[{"CPU": 1.0}, count], ...]."""
    return tuple((tuple(sorted((k, float(v)) for k, v in shape.items())), int(count)) for shape, count in raw)


def app_view(app: dict[str, Any]) -> ServeAppView:
    deployments = (app.get("deployments") or {}).values()
    return ServeAppView(
        status=app.get("status", ""),
        message=failure_summary(app.get("message") or ""),
        deployed=app.get("deployed_app_config") or {},
        target_replicas=sum(int(d.get("target_num_replicas") or 0) for d in deployments),
        replica_states=tuple(r.get("state", "") for d in deployments for r in d.get("replicas") or []),
    )
