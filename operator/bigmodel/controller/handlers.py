"""Kopf handlers, kept thin: they route events to one level-based reconcile loop per resource.

Every BigModelJob and every BigModelService gets a daemon that reconciles it, then sleeps until its plan asks to
look again or something wakes it: an edit of its spec, or any change to one of its pods.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import kopf
from prometheus_client import start_http_server

from bigmodel.api.common import GROUP, VERSION
from bigmodel.builders.naming import JOB_LABEL, MANAGED_BY_LABEL, OPERATOR_NAME, SERVICE_LABEL
from bigmodel.controller.job_controller import Clients, delete_children, reconcile_job
from bigmodel.controller.kube import KubeClient, load_configuration
from bigmodel.controller.metrics import OperatorMetrics
from bigmodel.controller.ray_client import HttpRayClient
from bigmodel.controller.service_controller import delete_service_children, reconcile_service
from bigmodel.controller.settings import OperatorSettings

# Our own registry: importing this module never adds handlers to another operator in the same process.
REGISTRY = kopf.OperatorRegistry()
ERROR_BACKOFF_S = 5.0
PREFIX = "bigmodel.dev"


class Wakers:
    """One asyncio.Event per resource, set by handlers that know something changed."""

    def __init__(self) -> None:
        self._events: dict[tuple[str, str, str], asyncio.Event] = {}

    def event(self, kind: str, namespace: str, name: str) -> asyncio.Event:
        return self._events.setdefault((kind, namespace, name), asyncio.Event())

    def wake(self, kind: str, namespace: str, name: str) -> None:
        self.event(kind, namespace, name).set()

    def forget(self, kind: str, namespace: str, name: str) -> None:
        self._events.pop((kind, namespace, name), None)


@kopf.on.login(registry=REGISTRY)
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod, the service account; elsewhere $KUBECONFIG as it is now (the official client reads it at import)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup(registry=REGISTRY)
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """All Kopf settings in one place, and the clients every handler shares."""
    settings.persistence.finalizer = f"{PREFIX}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=PREFIX)
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    # No watching of CRDs and namespaces for changes: the chart installs the CRDs before the operator and names
    # the namespaces, and the operator's Role then needs no cluster-wide read of either (least privilege).
    settings.scanning.disabled = True
    operator_settings: OperatorSettings = memo.setdefault("settings", OperatorSettings.from_env())
    memo.setdefault("wakers", Wakers())
    metrics = OperatorMetrics()
    if operator_settings.metrics_port is not None:
        memo.metrics_server, _ = start_http_server(operator_settings.metrics_port, registry=metrics.registry)
    memo.clients = Clients(
        kube=await KubeClient(load_configuration()).__aenter__(),
        ray=memo.get("ray") or HttpRayClient(),
        settings=operator_settings,
        metrics=metrics,
    )
    logger.info("bigmodel operator started; namespaces: %s", operator_settings.namespaces or "all")


@kopf.on.cleanup(registry=REGISTRY)
async def close_clients(memo: kopf.Memo, **_: Any) -> None:
    if "metrics_server" in memo:
        memo.metrics_server.shutdown()
        memo.metrics_server.server_close()
    await memo.clients.ray.close()
    await memo.clients.kube.__aexit__(None, None, None)


async def _reconcile_loop(
    kind: str, namespace: str, name: str, memo: kopf.Memo, stopped: Any, logger: logging.Logger,
    reconcile: Callable[[Clients], Awaitable[float | None]],
) -> None:  # fmt: skip
    wake = memo.wakers.event(kind, namespace, name)
    while not stopped:
        wake.clear()
        clients: Clients = memo.clients
        try:
            with clients.metrics.reconcile_duration.time():
                delay = await reconcile(clients)
        except Exception:  # a failed pass is retried; the status was not written, so nothing is half-done
            clients.metrics.reconcile_errors.inc()
            logger.exception("reconciling %s %s/%s failed; retrying in %.0f s", kind, namespace, name, ERROR_BACKOFF_S)
            delay = ERROR_BACKOFF_S
        try:
            await asyncio.wait_for(wake.wait(), timeout=delay)
        except asyncio.TimeoutError:
            pass


def _spec_edited(body: kopf.Body) -> bool:
    """A spec edit, not one of our own status writes coming back."""
    return body["metadata"].get("generation") != (body.get("status") or {}).get("observedGeneration")


@kopf.daemon(GROUP, VERSION, "bigmodeljobs", id="bigmodeljob-reconciler", cancellation_timeout=5.0, registry=REGISTRY)
async def job_reconciler(name: str, namespace: str, memo: kopf.Memo, stopped: Any, logger: logging.Logger, **_: Any) -> None:
    async def reconcile(clients: Clients) -> float | None:
        return await reconcile_job(namespace, name, clients)

    await _reconcile_loop("job", namespace, name, memo, stopped, logger, reconcile)


@kopf.daemon(GROUP, VERSION, "bigmodelservices", id="bigmodelservice-reconciler", cancellation_timeout=5.0, registry=REGISTRY)
async def service_reconciler(name: str, namespace: str, memo: kopf.Memo, stopped: Any, logger: logging.Logger, **_: Any) -> None:
    # Kept in memory only: after an operator restart the idle timers start again, which delays a scale-down and
    # never hastens one.
    idle_since: dict[str, datetime] = {}

    async def reconcile(clients: Clients) -> float | None:
        return await reconcile_service(namespace, name, clients, idle_since)

    await _reconcile_loop("service", namespace, name, memo, stopped, logger, reconcile)


@kopf.on.event(GROUP, VERSION, "bigmodeljobs", id="bigmodeljob-spec-watch", registry=REGISTRY)
def job_changed(body: kopf.Body, name: str, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    if _spec_edited(body):
        memo.wakers.wake("job", namespace, name)


@kopf.on.event(GROUP, VERSION, "bigmodelservices", id="bigmodelservice-spec-watch", registry=REGISTRY)
def service_changed(body: kopf.Body, name: str, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    if _spec_edited(body):
        memo.wakers.wake("service", namespace, name)


@kopf.on.event("", "v1", "pods", labels={MANAGED_BY_LABEL: OPERATOR_NAME, JOB_LABEL: kopf.PRESENT}, id="pod-watch", registry=REGISTRY)
def pod_changed(labels: kopf.Labels, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    memo.wakers.wake("job", namespace, labels[JOB_LABEL])


@kopf.on.event("", "v1", "pods", labels={MANAGED_BY_LABEL: OPERATOR_NAME, SERVICE_LABEL: kopf.PRESENT}, id="service-pod-watch", registry=REGISTRY)
def service_pod_changed(labels: kopf.Labels, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    memo.wakers.wake("service", namespace, labels[SERVICE_LABEL])


@kopf.on.delete(GROUP, VERSION, "bigmodeljobs", id="bigmodeljob-cleanup", registry=REGISTRY)
async def job_deleted(body: kopf.Body, name: str, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    await delete_children(dict(body), memo.clients.kube, memo.clients.ray)
    memo.wakers.forget("job", namespace, name)
    memo.clients.metrics.forget(namespace, name)


@kopf.on.delete(GROUP, VERSION, "bigmodelservices", id="bigmodelservice-cleanup", registry=REGISTRY)
async def service_deleted(body: kopf.Body, name: str, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    await delete_service_children(dict(body), memo.clients.kube)
    memo.wakers.forget("service", namespace, name)
    memo.clients.metrics.forget_service(namespace, name)
