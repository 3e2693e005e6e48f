"""The Kubernetes API for the integration and end-to-end tiers: our in-memory API server on loopback, and a client.

:class:`Emulator` runs :class:`tests.support.apiserver.ApiServer` (what it does and does not do is listed there) over
real HTTP in its own thread and event loop, so that a test may block (a sync Kubernetes client, ``time.sleep``, a Ray
call) without stalling the server the operator talks to. It writes a kubeconfig pointing at it, runs the owner
garbage collector every :data:`GC_PERIOD_S`, and keeps the record of requests for the RBAC test.

Recipe (exercised by ``tests/integration/test_emulator_smoke.py``)::

    with running_emulator(PROJECT_CRDS) as emulator:           # sync: fine in sync or async tests and fixtures
        # A) the operator as a real process: Kopf's default login reads $KUBECONFIG through the `kubernetes` client.
        env = {**os.environ, "KUBECONFIG": str(emulator.kubeconfig)}
        subprocess.Popen([sys.executable, "-m", "kopf", "run", "--standalone", "--namespace=default", "op.py"], env=env)
        # B) in-process, e.g. to inject fakes: `kubernetes` reads $KUBECONFIG once, at import, so give Kopf a login
        #    handler that reads it when called, and pass the variable to the runner:
        registry = kopf.OperatorRegistry()           # or the default one, plus the same login handler
        kopf.on.login(registry=registry)(kopf.login_with_kubeconfig)
        with KopfRunner(["run", "--standalone", "--namespace=default"], registry=registry,
                        env={"KUBECONFIG": str(emulator.kubeconfig)}, timeout=30):
            async with KubeClient(emulator.url) as kube:
                await kube.create("bigmodel.dev/v1alpha1", "bigmodeljobs", {...})
                await wait_for(lambda: kube.get("v1", "configmaps", "..."), 10, "no child appeared")

A ``kubernetes`` client for the test itself: ``kubernetes.config.new_client_from_config(config_file=str(kubeconfig))``.
Give Kopf exact ``--namespace`` names or ``--all-namespaces``, and ``settings.watching.server_timeout`` a few
seconds so that its watches reconnect (and end) quickly. ``emulator.operator_calls()`` lists what the operator asked
(verb, group, resource, subresource), for checking the chart's RBAC rules.

A bad day for the operator's pods: a pod bound to a node (``await kube.bind(name, node)``, or the local kubelet,
which binds what it runs to ``localhost``) stays Terminating after a delete until its kubelet confirms;
``emulator.finish_termination(namespace, name)`` confirms in the kubelet's stead. ``emulator.lose_node("localhost")``
cuts a node's kubelet off for good: its pods keep their last status, and once deleted stay Terminating until a force
delete (``kube.delete(..., grace_period_seconds=0)``, or the operator's own) or ``finish_termination``. To make the
node's death visible to Ray as well, kill the pods' processes (``kubelet.kill(name)``) after losing the node.
``emulator.faults`` scripts refusals, slow answers and cut watches (:mod:`tests.support.faults`).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import tempfile
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, cast, overload

import aiohttp
import yaml
from aiohttp import web

from tests.support.apiserver import (
    CLIENT_USER_AGENT,
    EMULATOR_USER_AGENT,
    KUBELET_USER_AGENT,
    TEST_USER_AGENTS,
    ApiCall,
    ApiServer,
    JsonObject,
    fields_match,
    labels_match,
)
from tests.support.faults import Fault, FaultRule, FaultTable, Injection

__all__ = [
    "CLIENT_USER_AGENT", "EMULATOR_USER_AGENT", "KUBELET_USER_AGENT", "PROJECT_CRDS", "TEST_USER_AGENTS", "ApiCall",
    "ApiError", "Emulator", "Fault", "FaultRule", "FaultTable", "Injection", "JsonObject", "KubeClient", "api_path",
    "fields_match", "labels_match", "running_emulator", "wait_for",
]

T = TypeVar("T")

PROJECT_CRDS = sorted((Path(__file__).resolve().parents[2] / "crds").glob("*.yaml"))
GC_PERIOD_S = 0.2
START_TIMEOUT_S = 15.0
SHUTDOWN_TIMEOUT_S = 2.0


def api_path(api_version: str, plural: str, namespace: str | None = None, name: str | None = None,
             subresource: str | None = None) -> str:
    """The URL path of a resource collection, an object, or an object's subresource."""
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{prefix}/namespaces/{namespace}/{plural}" if namespace is not None else f"{prefix}/{plural}"
    if name is not None:
        path += f"/{name}"
        if subresource is not None:
            path += f"/{subresource}"
    return path


def _kubeconfig_text(url: str) -> str:
    return yaml.safe_dump({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": url}}],
        "users": [{"name": "emulator", "user": {}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "emulator",
                                                      "namespace": "default"}}],
        "current-context": "emulator",
    })


class Emulator:
    """A running emulator: its URL, a kubeconfig file pointing at it, and the record of requests it served."""

    def __init__(self, crds: list[JsonObject], namespaces: tuple[str, ...], directory: Path) -> None:
        self._crds = crds
        self._namespaces = namespaces
        self._directory = directory
        self._thread = threading.Thread(target=self._run, name="kube-emulator", daemon=True)
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._server: ApiServer | None = None
        self._url: str | None = None
        self._failure: BaseException | None = None

    @property
    def url(self) -> str:
        """The API server's base URL, e.g. ``http://127.0.0.1:41234``."""
        if self._url is None:
            raise RuntimeError("the emulator is not running")
        return self._url

    @property
    def kubeconfig(self) -> Path:
        """A kubeconfig file (no credentials, plain HTTP, namespace ``default``) for kubectl-alike clients and Kopf."""
        return self._directory / "kubeconfig.yaml"

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            raise TimeoutError(f"the Kubernetes emulator did not start within {START_TIMEOUT_S} s")
        if self._failure is not None:
            raise RuntimeError("the Kubernetes emulator failed to start") from self._failure
        self.kubeconfig.write_text(_kubeconfig_text(self.url))

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._stopping is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the Kubernetes emulator did not stop within {timeout} s")

    def api_calls(self) -> list[ApiCall]:
        """Every Kubernetes API request served so far, in arrival order (discovery requests excluded)."""
        return self._call(lambda: list(self._api.calls))

    def operator_calls(self) -> list[ApiCall]:
        """The requests not made by this test tooling (emulator, :class:`KubeClient`, local kubelet)."""
        return [call for call in self.api_calls() if call.user_agent not in TEST_USER_AGENTS]

    def finish_termination(self, namespace: str, name: str) -> None:
        """Remove a Terminating pod as its kubelet would once its containers stopped, even on a lost node (it stays
        while it has finalizers); ValueError when the pod is not Terminating."""
        self._call(lambda: self._api.store.finish_termination(namespace, name))

    def lose_node(self, node: str) -> None:
        """Cut `node` off: from now on nothing its kubelet sends reaches the server (answered 503), so its pods keep
        their last status and, once deleted, stay Terminating for ever (until :meth:`finish_termination`)."""
        self._call(lambda: self._api.lost_nodes.add(node))

    @property
    def faults(self) -> FaultTable:
        """The server's fault rules (thread-safe: add and remove them from the test; see :mod:`tests.support.faults`)."""
        return self._api.faults

    @property
    def _api(self) -> ApiServer:
        if self._server is None:
            raise RuntimeError("the emulator is not running")
        return self._server

    def _call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the emulator's loop, so it never sees the server's record in the middle of a change."""
        if self._loop is None:
            raise RuntimeError("the emulator is not running")

        async def call() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(timeout=10)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to the starting thread, which raises it
            self._failure = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        server = ApiServer(self._crds, self._namespaces)
        # A watch's handler is cancelled when its client goes, so abandoned watches do not pile up.
        runner = web.AppRunner(server.application(), handler_cancellation=True, access_log=None,
                               shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            host, port = runner.addresses[0][:2]
            self._server = server
            self._url = f"http://{host}:{port}"
            collector = asyncio.create_task(server.collect_garbage(GC_PERIOD_S))
            self._ready.set()
            await self._stopping.wait()
            collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await collector
            server.store.close()  # ends the watch streams, so that the shutdown need not wait for their clients
        finally:
            await runner.cleanup()


@contextlib.contextmanager
def running_emulator(crd_paths: list[Path], namespaces: tuple[str, ...] = ("default",)) -> Iterator[Emulator]:
    """Start an emulator on 127.0.0.1 (a free port) with the builtin resources, the given CRDs and namespaces."""
    crds = [doc for path in crd_paths for doc in yaml.safe_load_all(path.read_text()) if doc]
    with tempfile.TemporaryDirectory(prefix="kube-emulator-") as directory:
        emulator = Emulator(crds, namespaces, Path(directory))
        emulator.start()
        try:
            yield emulator
        finally:
            emulator.stop()


class ApiError(Exception):
    """A non-2xx answer from the API server."""

    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        super().__init__(f"{method} {path} -> {status}: {body[:500]}")
        self.status = status
        self.body = body


class KubeClient:
    """A small async client for tests: create/get/list/patch/delete objects and read events.

    ``api_version`` is ``"v1"`` for the core group or ``"group/version"``; ``namespace=None`` addresses cluster-scoped
    resources (or all namespaces, for :meth:`list`). Annotations say ``builtins.list`` because the method ``list``
    shadows the builtin in the class body.
    """

    def __init__(self, url: str) -> None:
        self._url = url
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> KubeClient:
        self._session = aiohttp.ClientSession(self._url, headers={"User-Agent": CLIENT_USER_AGENT})
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._session is not None:
            await self._session.close()

    async def _request(self, method: str, path: str, *, json: Any = None, params: Mapping[str, str] | None = None,
                       content_type: str = "application/json") -> JsonObject | None:
        if self._session is None:
            raise RuntimeError("use KubeClient as `async with KubeClient(url) as client`")
        headers = {"Content-Type": content_type} if json is not None else {}
        async with self._session.request(method, path, json=json, params=params, headers=headers) as response:
            text = await response.text()
            if response.status == 404 and method in ("GET", "DELETE"):
                return None
            if response.status >= 300:
                raise ApiError(response.status, method, path, text)
            return cast(JsonObject, await response.json(content_type=None))

    async def create(self, api_version: str, plural: str, body: JsonObject, *,
                     namespace: str | None = "default") -> JsonObject:
        body = {**body, "metadata": {**body.get("metadata", {})}}
        if namespace is not None:
            body["metadata"].setdefault("namespace", namespace)
        created = await self._request("POST", api_path(api_version, plural, namespace), json=body)
        assert created is not None  # a successful create always answers the object
        return created

    async def get(self, api_version: str, plural: str, name: str, *,
                  namespace: str | None = "default") -> JsonObject | None:
        """The object, or None when it does not exist."""
        return await self._request("GET", api_path(api_version, plural, namespace, name))

    async def list(self, api_version: str, plural: str, *, namespace: str | None = "default",
                   label_selector: str | None = None, field_selector: str | None = None) -> builtins.list[JsonObject]:
        params = {key: value for key, value in {"labelSelector": label_selector,
                                                "fieldSelector": field_selector}.items() if value}
        listing = await self._request("GET", api_path(api_version, plural, namespace), params=params)
        return [] if listing is None else list(listing["items"])

    async def patch(self, api_version: str, plural: str, name: str, patch: JsonObject | builtins.list[JsonObject], *,
                    namespace: str | None = "default", subresource: str | None = None) -> JsonObject:
        """A JSON merge patch (a dict) or a JSON patch (a list of operations)."""
        content_type = "application/json-patch+json" if isinstance(patch, list) else "application/merge-patch+json"
        patched = await self._request("PATCH", api_path(api_version, plural, namespace, name, subresource),
                                      json=patch, content_type=content_type)
        assert patched is not None  # a successful patch always answers the object
        return patched

    async def patch_status(self, api_version: str, plural: str, name: str, status: JsonObject, *,
                           namespace: str | None = "default") -> JsonObject:
        return await self.patch(api_version, plural, name, {"status": status}, namespace=namespace,
                                subresource="status")

    async def delete(self, api_version: str, plural: str, name: str, *, namespace: str | None = "default",
                     grace_period_seconds: int | None = None, preconditions: JsonObject | None = None,
                     ) -> JsonObject | None:
        """The object as it ends up (still there when it is Terminating or has finalizers), or None when it did not
        exist. ``preconditions``: ``{"uid": ..., "resourceVersion": ...}``."""
        options: JsonObject = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if grace_period_seconds is not None:
            options["gracePeriodSeconds"] = grace_period_seconds
        if preconditions is not None:
            options["preconditions"] = preconditions
        return await self._request("DELETE", api_path(api_version, plural, namespace, name), json=options)

    async def bind(self, name: str, node: str, *, namespace: str = "default") -> None:
        """Assign a pod to a node through its ``binding`` subresource, as a scheduler does."""
        binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
                   "target": {"apiVersion": "v1", "kind": "Node", "name": node}}
        await self._request("POST", api_path("v1", "pods", namespace, name, "binding"), json=binding)

    async def events(self, *, namespace: str | None = "default",
                     involved_name: str | None = None) -> builtins.list[JsonObject]:
        """Core v1 Events, optionally only those about one object (by name)."""
        selector = f"involvedObject.name={involved_name}" if involved_name else None
        return await self.list("v1", "events", namespace=namespace, field_selector=selector)


@overload
async def wait_for(predicate: Callable[[], Awaitable[T | None]], timeout: float, message: str,
                   interval: float = 0.1) -> T:
    ...


@overload
async def wait_for(predicate: Callable[[], T | None], timeout: float, message: str, interval: float = 0.1) -> T:
    ...


async def wait_for(predicate: Callable[[], Any], timeout: float, message: str, interval: float = 0.1) -> Any:
    """Poll `predicate` (sync or async) until it returns something truthy and return that; fail after `timeout` s."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = predicate()
        last = await result if isinstance(result, Awaitable) else result
        if last:
            return last
        if asyncio.get_running_loop().time() >= deadline:
            raise AssertionError(f"{message} (waited {timeout} s; last value: {last!r})")
        await asyncio.sleep(interval)
