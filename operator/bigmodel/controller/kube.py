"""A small async Kubernetes REST client: the handful of calls the operator makes, and nothing else.

Authentication comes from the official client's loaders (kubeconfig or in-cluster service account);
requests go through one aiohttp session so a thousand jobs share its connection pool.

Reads are answered from the operator's caches (controller/cache.py) where one covers the namespace: the owners from
what Kopf watches, the pods and Services from their informers (controller/informer.py). Every write's answer goes
into the cache of its resource, so the next read sees what the operator itself did.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import kubernetes.client
import kubernetes.config

from bigmodel.api.wire import GROUP, PLURALS, VERSION, VOLCANO_GROUP, VOLCANO_VERSION, OwnerKind
from bigmodel.controller.cache import ObjectCache


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str

    def path(self, namespace: str | None, name: str | None = None, subresource: str | None = None) -> str:
        """An object's path, or its collection's in one namespace or (None) in all."""
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        path = f"{base}/{self.plural}" if namespace is None else f"{base}/namespaces/{quote(namespace)}/{self.plural}"
        if name is not None:
            path += f"/{quote(name)}"
        if subresource is not None:
            path += f"/{subresource}"
        return path


PODS = Resource("", "v1", "pods")
SERVICES = Resource("", "v1", "services")
SECRETS = Resource("", "v1", "secrets")
NETWORK_POLICIES = Resource("networking.k8s.io", "v1", "networkpolicies")
POD_GROUPS = Resource(VOLCANO_GROUP, VOLCANO_VERSION, "podgroups")
RESOURCES_BY_KIND = {
    "Pod": PODS,
    "Service": SERVICES,
    "Secret": SECRETS,
    "NetworkPolicy": NETWORK_POLICIES,
    "PodGroup": POD_GROUPS,
}
"""The resource of each kind of child the operator creates."""
OWNERS: dict[OwnerKind, Resource] = {kind: Resource(GROUP, VERSION, plural) for kind, plural in PLURALS.items()}


class KubeError(RuntimeError):
    """An API answer of 400 or more: its code, the `Status` reason and message, and any Retry-After."""

    def __init__(
        self, status: int, method: str, path: str, message: str, reason: str = "", retry_after_s: float | None = None
    ) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after_s = retry_after_s

    @classmethod
    def from_answer(cls, status: int, method: str, path: str, text: str, retry_after: str | None) -> KubeError:
        """From the body the API server sends, a `Status` object; any other body is kept as text."""
        try:
            answer = json.loads(text)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            answer = {"message": text[:300]}
        try:
            wait = float(retry_after) if retry_after else None
        except ValueError:
            wait = None
        return cls(status, method, path, str(answer.get("message") or ""), str(answer.get("reason") or ""), wait)


def load_configuration() -> kubernetes.client.Configuration:
    """In a pod, the service account; elsewhere $KUBECONFIG (read now, not at import) or ~/.kube/config."""
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration)
    return configuration


def _ssl_context(configuration: kubernetes.client.Configuration) -> ssl.SSLContext | bool:
    if not configuration.host.startswith("https"):
        return False
    if not configuration.verify_ssl:
        return False
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file)
    return context


class KubeClient:
    def __init__(
        self, configuration: kubernetes.client.Configuration, caches: Mapping[Resource, ObjectCache] | None = None
    ) -> None:
        self._configuration = configuration
        self._host = configuration.host.rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        self._caches = dict(caches or {})

    async def __aenter__(self) -> KubeClient:
        connector = aiohttp.TCPConnector(ssl=_ssl_context(self._configuration), limit=64)
        # No total timeout: it would count the wait for one of the 64 pooled connections, so a thousand reconcile
        # loops starting at once time out in the queue and retry. Connecting and each read are bounded instead.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=30)
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        token = self._configuration.get_api_key_with_prefix("authorization")
        if token:
            headers["Authorization"] = token
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
        content_type: str | None = None,
        tolerate: tuple[int, ...] = (),
    ) -> dict[str, Any] | None:
        assert self._session is not None, "use the client inside `async with`"
        async with self._session.request(
            method,
            self._host + path,
            json=body,
            params=params,
            headers=self._headers(content_type or ("application/json" if body is not None else None)),
        ) as response:
            if response.status in tolerate:
                return None
            if response.status >= 400:
                text = await response.text()
                raise KubeError.from_answer(response.status, method, path, text, response.headers.get("Retry-After"))
            return await response.json(content_type=None)

    def _cached(self, resource: Resource, namespace: str) -> ObjectCache | None:
        cache = self._caches.get(resource)
        return cache if cache is not None and cache.covers(namespace) else None

    async def list(self, resource: Resource, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        cache = self._cached(resource, namespace)
        found = cache.select(namespace, labels) if cache is not None else None
        if found is not None:
            return found
        selector = ",".join(f"{key}={value}" for key, value in sorted(labels.items()))
        items, _ = await self.list_collection(resource, namespace, selector)
        # Filtered here too: a server that ignores labelSelector must not hand us another job's pods.
        return [i for i in items if all((i["metadata"].get("labels") or {}).get(k) == v for k, v in labels.items())]

    async def list_collection(
        self, resource: Resource, namespace: str | None, selector: str
    ) -> tuple[list[dict[str, Any]], str]:
        """The objects of a namespace (None: of all) that match a label selector, and the list's resourceVersion."""
        found = await self._call("GET", resource.path(namespace), params={"labelSelector": selector}) or {}
        return found.get("items") or [], str((found.get("metadata") or {}).get("resourceVersion", ""))

    async def watch(
        self, resource: Resource, namespace: str | None, selector: str, since: str, timeout_s: int
    ) -> AsyncIterator[dict[str, Any]]:
        """The watch events after resourceVersion `since` until the server ends the stream after `timeout_s`;
        an ERROR event (410 Expired: `since` is too old) is raised as a KubeError with its code."""
        assert self._session is not None, "use the client inside `async with`"
        path = resource.path(namespace)
        params = {
            "watch": "true",
            "labelSelector": selector,
            "resourceVersion": since,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_s),
        }
        # An idle watch sends nothing, or a bookmark now and then: only a silence past its own end is a failure.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=timeout_s + 30)
        async with self._session.get(
            self._host + path, params=params, headers=self._headers(), timeout=timeout
        ) as response:
            if response.status >= 400:
                raise KubeError.from_answer(response.status, "WATCH", path, await response.text(), None)
            # Split by hand: aiohttp's line reader refuses lines over its buffer size, and an object can be larger.
            pending = b""
            async for chunk in response.content.iter_any():
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event.get("type") == "ERROR":
                        status = event.get("object") or {}
                        code, message = int(status.get("code") or 500), str(status.get("message") or "")
                        raise KubeError(code, "WATCH", path, message, str(status.get("reason") or ""))
                    yield event

    async def get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        cache = self._cached(resource, namespace)
        if cache is not None:
            return cache.get(namespace, name)
        return await self._call("GET", resource.path(namespace, name), tolerate=(404,))

    async def create(self, resource: Resource, namespace: str, body: dict[str, Any]) -> None:
        """Create, or find it already there and ours: a repeated pass after an operator restart makes nothing twice.

        Already there and not ours (another owner's, or ours but terminating) is a 409 KubeError that says so.
        """
        path = resource.path(namespace)
        try:
            created = await self._call("POST", path, body=body)
        except KubeError as error:
            if error.status != 409:
                raise
            name = body["metadata"]["name"]
            created = await self._call("GET", resource.path(namespace, name), tolerate=(404,))
            problem = _not_reusable(resource, name, created, body)
            if problem:
                raise KubeError(409, "POST", path, problem) from error
        self._remember(resource, created)

    async def create_if_absent(self, resource: Resource, namespace: str, body: dict[str, Any]) -> bool:
        """Create it; False if its name was taken (409), whoever holds it."""
        return await self._call("POST", resource.path(namespace), body=body, tolerate=(409,)) is not None

    async def replace(self, resource: Resource, namespace: str, body: dict[str, Any]) -> None:
        """Create it in place of whatever holds its name: for objects the operator derives whole and never reads
        (a cluster's NetworkPolicy and token Secret), so that one made by someone else can never stand in."""
        if not await self.create_if_absent(resource, namespace, body):
            await self.delete(resource, namespace, body["metadata"]["name"])
            await self._call("POST", resource.path(namespace), body=body)

    async def delete(self, resource: Resource, namespace: str, name: str) -> None:
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        deleted = await self._call("DELETE", resource.path(namespace, name), body=body, tolerate=(404,))
        cache = self._caches.get(resource)
        if cache is None:
            return
        if deleted is None or deleted.get("kind") == "Status":  # gone already (404), or gone without a last state
            last = cache.get(namespace, name)
            if last is not None:
                cache.remove(last)
        elif _terminating(deleted):
            cache.put(deleted)  # still there, and the next pass must see it so
        else:
            cache.remove(deleted)

    async def patch(self, resource: Resource, namespace: str, name: str, patch: dict[str, Any]) -> None:
        patched = await self._call(
            "PATCH", resource.path(namespace, name), body=patch, content_type="application/merge-patch+json"
        )
        self._remember(resource, patched)

    async def patch_status(self, resource: Resource, namespace: str, name: str, status: dict[str, Any]) -> None:
        """A merge patch of the status: keys set to None are removed."""
        patched = await self._call(
            "PATCH",
            resource.path(namespace, name, "status"),
            body={"status": status},
            content_type="application/merge-patch+json",
            tolerate=(404,),
        )
        self._remember(resource, patched)

    def _remember(self, resource: Resource, obj: dict[str, Any] | None) -> None:
        cache = self._caches.get(resource)
        if cache is not None and obj is not None:
            cache.put(obj)


def _terminating(obj: dict[str, Any]) -> bool:
    """Marked for deletion and not gone yet: a grace period to run out (a pod's) or finalizers to be removed."""
    meta = obj["metadata"]
    return bool(meta.get("deletionTimestamp") and (meta.get("deletionGracePeriodSeconds") or meta.get("finalizers")))


def _not_reusable(resource: Resource, name: str, existing: dict[str, Any] | None, body: dict[str, Any]) -> str:
    """Why an object found in the way of a create is not the one the operator meant to make; empty if it is."""
    what = f"{resource.plural} {name!r} already exists"
    if existing is None:
        return f"{what}, and was gone when read back"
    meta = existing["metadata"]
    wanted = body["metadata"].get("ownerReferences") or []
    owners = meta.get("ownerReferences") or []
    if not {ref.get("uid") for ref in wanted} & {ref.get("uid") for ref in owners}:
        holders = ", ".join(f"{ref.get('kind')} {ref.get('name')} (uid {ref.get('uid')})" for ref in owners)
        ours = ", ".join(f"{ref.get('kind')} {ref.get('name')}" for ref in wanted) or "the operator"
        return f"{what} and belongs to {holders or 'no owner'}, not to {ours}"
    if meta.get("deletionTimestamp"):
        return f"{what} and is terminating"
    return ""
