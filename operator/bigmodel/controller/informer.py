"""Informers: the pods and Services the operator made, listed once and then watched, into an ObjectCache each.

The API server filters by the managed-by label, so the operator never reads another pod of the cluster. One watch
per watched namespace (or one for all of them), resumed from the last resourceVersion it saw; a 410 Expired means
the server no longer has the changes since then, so the namespace is listed again. A failed watch is retried with
capped exponential backoff; the cache keeps answering meanwhile, from what it last knew.

Every change that the cache did not already hold (not the echo of the operator's own write) is handed to
`on_change`, which wakes the owner's reconcile loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import aiohttp

from bigmodel.api.wire import MANAGED_BY_LABEL, OPERATOR_NAME
from bigmodel.controller.backoff import exponential_backoff_s
from bigmodel.controller.cache import ObjectCache
from bigmodel.controller.kube import KubeClient, KubeError, Resource

log = logging.getLogger(__name__)

SELECTOR = f"{MANAGED_BY_LABEL}={OPERATOR_NAME}"
WATCH_TIMEOUT_S = 300
"""How long one watch request lasts before the server ends it and the informer resumes with another."""
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
EXPIRED = 410


class Informer:
    """Keeps `cache` in step with one resource's objects in `namespaces` (empty: all namespaces)."""

    def __init__(
        self,
        kube: KubeClient,
        resource: Resource,
        cache: ObjectCache,
        namespaces: list[str],
        on_change: Callable[[dict[str, Any]], None],
    ) -> None:
        self._kube = kube
        self._resource = resource
        self._cache = cache
        self._scopes: list[str | None] = list(namespaces) or [None]
        self._on_change = on_change
        self._versions: dict[str | None, str] = {}
        """Per namespace (None: all), the resourceVersion to resume watching from; none: list first."""

    async def run(self) -> None:
        """Follow every namespace until cancelled."""
        await asyncio.gather(*(self._follow(scope) for scope in self._scopes))

    async def _follow(self, namespace: str | None) -> None:
        failures = 0
        while True:
            try:
                if namespace not in self._versions:
                    await self._relist(namespace)
                await self._watch(namespace)
                failures = 0
            except KubeError as error:
                if error.status == EXPIRED:
                    log.info("the %s watch expired; listing them again", self._resource.plural)
                    del self._versions[namespace]
                    continue
                failures = await self._back_off(namespace, failures, error)
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as error:
                failures = await self._back_off(namespace, failures, error)
            except Exception:  # a bug: said with its traceback, and retried rather than leaving the cache stale
                log.exception("following %s failed", self._resource.plural)
                failures = await self._back_off(namespace, failures, None)

    async def _relist(self, namespace: str | None) -> None:
        items, version = await self._kube.list_collection(self._resource, namespace, SELECTOR)
        for obj in self._cache.replace(namespace, items, version):
            self._on_change(obj)
        self._versions[namespace] = version

    async def _watch(self, namespace: str | None) -> None:
        """Apply a watch's events until the server ends it, noting each resourceVersion to resume from."""
        since = self._versions[namespace]
        async for event in self._kube.watch(self._resource, namespace, SELECTOR, since, WATCH_TIMEOUT_S):
            obj = event["object"]
            self._versions[namespace] = str(obj["metadata"].get("resourceVersion") or self._versions[namespace])
            kind = event["type"]
            if kind == "BOOKMARK":
                continue
            if self._cache.remove(obj) if kind == "DELETED" else self._cache.put(obj):
                self._on_change(obj)

    async def _back_off(self, namespace: str | None, failures: int, error: Exception | None) -> int:
        failures += 1
        delay = exponential_backoff_s(failures, FIRST_BACKOFF_S, MAX_BACKOFF_S)
        if error is not None:
            where = namespace or "all namespaces"
            log.warning("watching %s in %s failed (%s); retrying in %.1f s", self._resource.plural, where, error, delay)
        await asyncio.sleep(delay)
        return failures
