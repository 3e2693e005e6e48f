"""Kopf handlers, kept thin: they route events to one level-based reconcile loop per resource, of any kind.

Every BigModelJob and every BigModelService gets a daemon that reconciles it (controller/loop.py), then sleeps until
its plan asks to look again or something wakes it: an edit of its spec, or a change to one of its pods or Services
that the operator did not make itself (seen by the informers, controller/informer.py).

A pass reads the world from memory: its owner from what Kopf's watch delivers here, its pods and Services from the
informers' caches (controller/cache.py). Kopf watches only the two owner resources.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

import kopf
from prometheus_client import start_http_server

from bigmodel.api import wire
from bigmodel.controller import loop
from bigmodel.controller.backoff import exponential_backoff_s
from bigmodel.controller.cache import ObjectCache
from bigmodel.controller.clients import Clients
from bigmodel.controller.cluster_secrets import ClusterSecrets, load_redis_password
from bigmodel.controller.cluster_tokens import ClusterTokens, load_key
from bigmodel.controller.informer import Informer
from bigmodel.controller.job_kind import JobKind
from bigmodel.controller.kind import Kind
from bigmodel.controller.kube import PODS, SERVICES, KubeClient, Resource, load_configuration
from bigmodel.controller.metrics import OperatorMetrics
from bigmodel.controller.ray_client import HttpRayClient
from bigmodel.controller.service_kind import ServiceKind
from bigmodel.controller.settings import OperatorSettings

# Our own registry: importing this module never adds handlers to another operator in the same process.
REGISTRY = kopf.OperatorRegistry()
FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 300.0
KINDS: tuple[Kind[Any, Any, Any], ...] = (JobKind(), ServiceKind())


class Wakers:
    """One asyncio.Event per resource, set by handlers that know something changed."""

    def __init__(self) -> None:
        self._events: dict[tuple[str, str, str], asyncio.Event] = {}

    def event(self, kind: str, namespace: str, name: str) -> asyncio.Event:
        return self._events.setdefault((kind, namespace, name), asyncio.Event())

    def wake(self, kind: str, namespace: str, name: str) -> None:
        """Wake a running loop; one that is not running yet looks at the world first thing anyway."""
        event = self._events.get((kind, namespace, name))
        if event is not None:
            event.set()

    def wake_owners(self, child: dict[str, Any]) -> None:
        """Wake the loops of the resources that a pod or Service belongs to, by its owner labels."""
        meta = child["metadata"]
        labels = meta.get("labels") or {}
        for kind in KINDS:
            owner = labels.get(wire.OWNER_LABEL[kind.name])
            if owner:
                self.wake(kind.name, meta["namespace"], owner)

    def forget(self, kind: str, namespace: str, name: str) -> None:
        self._events.pop((kind, namespace, name), None)


@kopf.on.login(registry=REGISTRY)
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod, the service account; elsewhere $KUBECONFIG as it is now (the official client reads it at import)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup(registry=REGISTRY)
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """All Kopf settings in one place, and the clients every handler shares."""
    settings.persistence.finalizer = wire.FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=wire.GROUP)
    # No diff base: no handler here reacts to a creation or an update (the loops compare spec and status), and
    # storing one would cost a PATCH of every new resource.
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    # No watching of CRDs and namespaces for changes: the chart installs the CRDs before the operator and names
    # the namespaces, and the operator's Role then needs no cluster-wide read of either (least privilege).
    settings.scanning.disabled = True
    operator_settings: OperatorSettings = memo.setdefault("settings", OperatorSettings.from_env())
    wakers: Wakers = memo.setdefault("wakers", Wakers())
    metrics = OperatorMetrics()
    if operator_settings.metrics_port is not None:
        memo.metrics_server, _ = start_http_server(operator_settings.metrics_port, registry=metrics.registry)
    namespaces = operator_settings.namespaces
    memo.owners = {kind.resource: ObjectCache() for kind in KINDS}
    for owners in memo.owners.values():
        for namespace in namespaces or [None]:
            owners.cover(namespace)  # complete before any loop runs: see remember_owner in register()
    children: dict[Resource, ObjectCache] = {
        resource: ObjectCache({wire.MANAGED_BY_LABEL: wire.OPERATOR_NAME}, wire.OWNER_LABEL.values())
        for resource in (PODS, SERVICES)
    }
    kube = await KubeClient(load_configuration(), memo.owners | children).__aenter__()
    memo.informers = [
        asyncio.create_task(Informer(kube, resource, cache, namespaces, wakers.wake_owners).run())
        for resource, cache in children.items()
    ]
    tokens = ClusterTokens(await load_key(kube, operator_settings.namespace, operator_settings.token_key_secret))
    redis_password = None
    if operator_settings.gcs_redis_password_secret:
        redis_password = await load_redis_password(
            kube,
            operator_settings.namespace,
            operator_settings.gcs_redis_password_secret,
            operator_settings.gcs_redis_password_key,
        )
    memo.clients = Clients(
        kube=kube,
        ray=memo.get("ray") or HttpRayClient(tokens),
        settings=operator_settings,
        metrics=metrics,
        tokens=tokens,
        secrets=ClusterSecrets(tokens, redis_password),
    )
    logger.info("bigmodel operator started; namespaces: %s", operator_settings.namespaces or "all")


@kopf.on.cleanup(registry=REGISTRY)
async def close_clients(memo: kopf.Memo, **_: Any) -> None:
    for informer in memo.informers:
        informer.cancel()
    await asyncio.gather(*memo.informers, return_exceptions=True)
    if "metrics_server" in memo:
        memo.metrics_server.shutdown()
        memo.metrics_server.server_close()
    await memo.clients.ray.close()
    await memo.clients.kube.__aexit__(None, None, None)


async def reconcile_loop(
    kind: Kind[Any, Any, Any], namespace: str, name: str, memo: kopf.Memo, stopped: Any, logger: logging.Logger
) -> None:
    """Reconcile until the resource is gone, sleeping between passes until woken or due."""
    wake = memo.wakers.event(kind.name, namespace, name)
    # Kept in memory only: after an operator restart the idle timers start again, which delays a scale-down and
    # never hastens one.
    timers: dict[str, datetime] = {}
    failures = 0
    while not stopped:
        wake.clear()
        clients: Clients = memo.clients
        try:
            with clients.metrics.reconcile_duration.time():
                delay = await loop.reconcile(kind, namespace, name, clients, timers)
            failures = 0
        except loop.PassFailed as failed:  # the status says which step failed; a retry makes nothing twice
            failures += 1
            clients.metrics.reconcile_failed(kind.name, namespace, name)
            delay = backoff_s(failures, failed.failure.retry_after_s)
            logger.warning("%s; retrying in %.0f s", failed.failure.message, delay)
        except Exception:  # a bug: said in the log with its traceback, and retried like any failure
            failures += 1
            clients.metrics.reconcile_failed(kind.name, namespace, name)
            delay = backoff_s(failures, None)
            logger.exception("reconciling %s %s/%s failed; retrying in %.0f s", kind.name, namespace, name, delay)
        try:
            await asyncio.wait_for(wake.wait(), timeout=delay)
        except asyncio.TimeoutError:
            pass


def backoff_s(failures: int, retry_after_s: float | None) -> float:
    """Capped exponential backoff after `failures` failed passes in a row (1 s, 2 s, 4 s, ... 5 min), never sooner
    than the server asked (429 Retry-After). A spec edit or a pod change still wakes the loop at once."""
    exponential = exponential_backoff_s(failures, FIRST_BACKOFF_S, MAX_BACKOFF_S)
    return max(exponential, min(retry_after_s or 0.0, MAX_BACKOFF_S))


class NoDiffBase(kopf.DiffBaseStorage):
    """Kopf's diff base, never stored: every object looks unchanged since it was last handled."""

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence:
        return self.build(body=body)

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        pass


def _spec_edited(body: kopf.Body) -> bool:
    """A spec edit, not one of our own status writes coming back."""
    return body["metadata"].get("generation") != (body.get("status") or {}).get("observedGeneration")


def register(kind: Kind[Any, Any, Any]) -> None:
    """The handlers of a kind: its reconcile daemon, what feeds the owner cache and wakes the daemon, and what its
    deletion cleans up."""
    plural, prefix = wire.PLURALS[kind.name], kind.name.lower()

    @kopf.daemon(
        wire.GROUP, wire.VERSION, plural, id=f"{prefix}-reconciler", cancellation_timeout=5.0, registry=REGISTRY
    )
    async def reconciler(
        name: str, namespace: str, memo: kopf.Memo, stopped: Any, logger: logging.Logger, **_: Any
    ) -> None:
        await reconcile_loop(kind, namespace, name, memo, stopped, logger)

    # Both are coroutines though they never wait: Kopf runs a plain function in a thread pool, which would cost
    # more than the handler on every event of every resource.
    @kopf.index(wire.GROUP, wire.VERSION, plural, id=f"{prefix}-owners", registry=REGISTRY)
    async def remember_owner(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        """Every state of the resource, into the cache its passes read instead of GETting it. An indexing handler,
        though it keeps nothing in Kopf's index: Kopf runs no other handler before every existing resource has been
        through its indexing handlers, so from the first pass on, what the cache lacks does not exist."""
        memo.owners[kind.resource].put(dict(body))

    @kopf.on.event(wire.GROUP, wire.VERSION, plural, id=f"{prefix}-spec-watch", registry=REGISTRY)
    async def owner_changed(type: str, body: kopf.Body, name: str, namespace: str, memo: kopf.Memo, **_: Any) -> None:
        if type == "DELETED":  # indexing handlers are not called for a deletion
            memo.owners[kind.resource].remove(body)
        elif _spec_edited(body):
            memo.wakers.wake(kind.name, namespace, name)

    @kopf.on.delete(wire.GROUP, wire.VERSION, plural, id=f"{prefix}-cleanup", registry=REGISTRY)
    async def deleted(body: kopf.Body, name: str, namespace: str, memo: kopf.Memo, **_: Any) -> None:
        await loop.delete_children(kind, dict(body), memo.clients)
        memo.wakers.forget(kind.name, namespace, name)
        memo.clients.metrics.forget(kind.name, namespace, name)


for _kind in KINDS:
    register(_kind)
