"""A Kubernetes API emulator on loopback for the integration and end-to-end tiers.

It is ``kmock.KubernetesEmulator`` (an in-memory object store served over real HTTP) with a thin layer of
API-server behaviour on top, running in its own thread and event loop so that a test may block (a sync Kubernetes
client, ``time.sleep``, a Ray call) without stalling the server the operator talks to.

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
seconds so that its namespace watch reconnects quickly. ``emulator.operator_calls()`` lists what the operator asked
(verb, group, resource, subresource), for checking the chart's RBAC rules.

What kmock 0.8 does by itself (verified by experiment, not taken on trust):

* discovery (``/api``, ``/apis``, group/version resource lists) for the bundled builtin resources and the CRDs
  registered here, so Kopf finds resources and detects the ``status`` subresource;
* create (POST; 409 if the name exists), get, list, delete, and PATCH with either a JSON merge patch (dicts are merged,
  ``null`` removes a key, lists are replaced whole) or a JSON patch (a list of operations);
* watch streams that Kopf consumes: every (re)connection first replays all existing objects as ``ADDED``, then streams
  ``ADDED``/``MODIFIED``/``DELETED``; ``timeoutSeconds`` and bookmarks are ignored (a watch never ends by itself);
* finalizers: DELETE of an object with finalizers only sets ``metadata.deletionTimestamp``; the object goes away
  when a patch empties its finalizers.

What kmock does NOT do, and this module adds (each is exercised by ``tests/integration/test_emulator_smoke.py``):

* server-populated metadata: kmock stores the body as sent. Here, create sets ``uid``, ``creationTimestamp``,
  ``namespace``, ``generation: 1`` and ``resourceVersion``; ``generateName`` makes a unique name (kmock answers 409
  to the second object with the same prefix, which breaks Kopf's event posting). Every patch bumps
  ``resourceVersion``; a patch that carries ``spec`` bumps ``generation``. Lists carry the current resourceVersion,
  and a watch from a resourceVersion skips the replay of objects unchanged since then (kmock replays them all,
  so Kopf would act twice on a stale body).
* a JSON patch whose ``test`` operation fails answers 422, as a real server does (kmock answers 500, and Kopf, whose
  finalizer patches ``test`` the resourceVersion, then retries the stale patch until it gives up).
* ``labelSelector`` and ``fieldSelector`` on list and watch: kmock ignores both and returns every object. Here, label
  selectors support ``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``, ``k notin (a,b)``, ``k`` and ``!k``; field selectors
  support ``=``, ``==`` and ``!=`` on any dotted path (``metadata.name``, ``status.phase``). A watch only streams the
  events of objects that match; it does not turn "stopped matching" into ``DELETED`` as a real server does.
* the status subresource: kmock merges whatever a ``.../status`` PATCH carries, spec included, and lets a main-resource
  PATCH change ``status``. Here, for resources that declare the ``status`` subresource, a ``/status`` patch only
  changes ``status`` and a main-resource patch leaves ``status`` alone, as a real API server does.
* owner-reference garbage collection: every 0.2 s, an object whose owners (by uid) are all gone is deleted
  (background propagation; it goes through the normal DELETE path, so finalizers and watch events apply).

What neither does (so test it in our own code, not here):

* no OpenAPI schema validation, defaulting or pruning of CRD objects; any body is stored as sent;
* no resourceVersion conflicts (a stale ``metadata.resourceVersion`` in a patch is accepted and overwritten);
* no PUT (the ``update`` verb): it answers 404 Endpoint Not Found, so the operator must patch, never replace;
* no server-side apply, strategic merge (lists are always replaced whole), dry-run, or ``deletecollection``;
* no namespace lifecycle: namespaces cannot be created or deleted, and objects can be created in a namespace that
  does not exist;
* no admission, no RBAC, no authentication: any request is allowed (:meth:`Emulator.api_calls` records them so a
  test can compare them with the chart's RBAC rules);
* Namespace objects: kmock's URL parser takes ``/api/v1/namespaces[/name]`` for the namespace prefix of a namespaced
  path, so it answers 500 to listing namespaces and 404 to reading one, and Kopf (which lists and watches namespaces
  when given ``--namespace``) never starts. Here, the namespaces given to :func:`running_emulator` are served
  read-only: list, get, and a watch that replays them and ends after ``timeoutSeconds`` (at most 60 s).
* no controllers besides the garbage collector: no Deployments/ReplicaSets, no Service endpoints, no scheduler,
  no kubelet (see :mod:`tests.support.kubelet` for the test-only kubelet), pods stay without status.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import datetime
import json
import re
import secrets
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, cast, overload

import aiohttp
import attrs
import jsonpatch
import kmock
import yaml
from typing_extensions import override

JsonObject = dict[str, Any]
T = TypeVar("T")

# Requests from the test tooling carry these user agents, so that `Emulator.operator_calls` can tell them apart
# from the operator's own requests.
EMULATOR_USER_AGENT = "bigmodel-tests-emulator"
CLIENT_USER_AGENT = "bigmodel-tests-client"
KUBELET_USER_AGENT = "bigmodel-tests-kubelet"
TEST_USER_AGENTS = frozenset({EMULATOR_USER_AGENT, CLIENT_USER_AGENT, KUBELET_USER_AGENT})

PROJECT_CRDS = sorted((Path(__file__).resolve().parents[2] / "crds").glob("*.yaml"))
GC_PERIOD_S = 0.2
NAMESPACE_WATCH_S = 60.0
START_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class ApiCall:
    """One request the emulator received, in RBAC terms (verb, API group, resource, subresource)."""

    method: str
    verb: str
    group: str
    resource: str
    subresource: str | None
    namespace: str | None
    name: str | None
    user_agent: str


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


def _split_selector(selector: str) -> list[str]:
    """Split a selector at the commas that separate its terms (not those inside ``in (a,b)``)."""
    terms: list[str] = []
    depth = 0
    current = ""
    for char in selector:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    terms.append(current)
    return [term.strip() for term in terms if term.strip()]


_LABEL_TERM = re.compile(
    r"^(?P<negated>!)?\s*(?P<key>[\w./-]+)\s*"
    r"(?:(?P<op>==|=|!=)\s*(?P<value>[\w./-]*)|\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?$"
)
_FIELD_TERM = re.compile(r"^(?P<path>[\w.]+)\s*(?P<op>==|=|!=)\s*(?P<value>.*)$")


def labels_match(labels: Mapping[str, str], selector: str) -> bool:
    """Whether labels satisfy a Kubernetes label selector string (equality- and set-based)."""
    for term in _split_selector(selector):
        match = _LABEL_TERM.match(term)
        if match is None:
            raise kmock.KubernetesError(status=400, reason="BadRequest", message=f"bad label selector: {term!r}")
        key = match["key"]
        if match["negated"]:
            ok = key not in labels
        elif match["op"] in ("=", "=="):
            ok = labels.get(key) == match["value"]
        elif match["op"] == "!=":
            ok = labels.get(key) != match["value"]
        elif match["setop"] is not None:
            values = {value.strip() for value in match["values"].split(",")}
            ok = (labels.get(key) in values) if match["setop"] == "in" else (labels.get(key) not in values)
        else:
            ok = key in labels
        if not ok:
            return False
    return True


def fields_match(obj: Mapping[str, Any], selector: str) -> bool:
    """Whether an object satisfies a field selector (``path=value``, ``path==value``, ``path!=value``)."""
    for term in _split_selector(selector):
        match = _FIELD_TERM.match(term)
        if match is None:
            raise kmock.KubernetesError(status=400, reason="BadRequest", message=f"bad field selector: {term!r}")
        value: Any = obj
        for part in match["path"].split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        actual = "" if value is None else str(value)
        if (actual == match["value"]) != (match["op"] != "!="):
            return False
    return True


def _object_selected(obj: Mapping[str, Any], params: Mapping[str, str]) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    return labels_match(labels, params.get("labelSelector", "")) and fields_match(obj, params.get("fieldSelector", ""))


_NAMESPACE_PATH = re.compile(r"^/api/v1/namespaces(?:/(?P<name>[^/]+))?/?$")
_HTTP_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def _rbac_verb(request: kmock.Request) -> str:
    if request.params.get("watch") in ("true", "1"):
        return "watch"
    if request.method.value == "GET":
        return "get" if request.name else "list"
    if request.method.value == "DELETE" and not request.name:
        return "deletecollection"
    method = str(request.method.value)
    return _HTTP_VERBS.get(method, method.lower())


def _status_response(status: int, reason: str, message: str) -> aiohttp.web.Response:
    return aiohttp.web.json_response({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                                      "code": status, "reason": reason, "message": message}, status=status)


def _now() -> str:
    return datetime.datetime.now(tz=datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@attrs.define(kw_only=True)
class _ClusterEmulator(kmock.KubernetesEmulator):
    """kmock's emulator plus the API-server behaviour listed in the module docstring."""

    namespaces: dict[str, JsonObject] = attrs.field(factory=dict)
    calls: list[ApiCall] = attrs.field(factory=list)
    _resource_version: int = 0

    def _next_resource_version(self) -> str:
        self._resource_version += 1
        return str(self._resource_version)

    def add_namespace(self, name: str) -> None:
        namespace: JsonObject = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name},
                                 "status": {"phase": "Active"}}
        self._complete_new_object(namespace, None)
        self.namespaces[name] = namespace

    @override
    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        match = _NAMESPACE_PATH.match(raw_request.path)
        if match is None:
            return await super().__call__(raw_request)
        # kmock's URL parser cannot represent Namespace objects (see the module docstring), so they are served here.
        name = match["name"]
        watching = raw_request.query.get("watch") in ("true", "1")
        verb = "watch" if watching else "get" if name else "list" if raw_request.method == "GET" else ""
        self.calls.append(ApiCall(method=raw_request.method, verb=verb or _HTTP_VERBS.get(raw_request.method, ""),
                                  group="", resource="namespaces", subresource=None, namespace=None, name=name,
                                  user_agent=raw_request.headers.get("User-Agent", "")))
        if raw_request.method != "GET":
            return _status_response(405, "MethodNotAllowed", "namespaces are read-only in this emulator")
        if watching:
            return await self._watch_namespaces(raw_request)
        if name is not None:
            if name not in self.namespaces:
                return _status_response(404, "NotFound", f"namespaces {name!r} not found")
            return aiohttp.web.json_response(self.namespaces[name])
        return aiohttp.web.json_response({"apiVersion": "v1", "kind": "NamespaceList",
                                          "metadata": {"resourceVersion": str(self._resource_version)},
                                          "items": list(self.namespaces.values())})

    async def _watch_namespaces(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """Replay the namespaces, then end the stream after `timeoutSeconds` (they never change, so it stays quiet)."""
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(raw_request)
        for namespace in self.namespaces.values():
            await response.write(json.dumps({"type": "ADDED", "object": namespace}).encode() + b"\n")
        await asyncio.sleep(min(float(raw_request.query.get("timeoutSeconds", NAMESPACE_WATCH_S)), NAMESPACE_WATCH_S))
        await response.write_eof()
        return response

    def _has_status_subresource(self, resource: kmock.resource) -> bool:
        return resource in self.resources and "status" in self.resources[resource].subresources

    @override
    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if request.resource is not None and request.resource.plural:
            self.calls.append(ApiCall(
                method=request.method.value,
                verb=_rbac_verb(request),
                group=request.resource.group or "",
                resource=request.resource.plural,
                subresource=request.subresource,
                namespace=request.namespace,
                name=request.name,
                user_agent=request.headers.get("User-Agent", ""),
            ))
        # kmock stores `request.data` as it is, so server-side fields are filled in by editing it in place first.
        if request.resource is not None and isinstance(request.data, dict):
            if request.action == kmock.action.CREATE:
                self._complete_new_object(request.data, request.namespace)
            elif request.action == kmock.action.UPDATE and request.name is not None:
                self._complete_merge_patch(request, request.data)
        elif request.resource is not None and isinstance(request.data, list):
            if request.action == kmock.action.UPDATE and request.name is not None:
                self._complete_json_patch(request, request.data)
        try:
            return await super()._handle(request)
        except jsonpatch.JsonPatchException as exc:
            # kmock answers 500 here; Kopf's optimistic `test` of resourceVersion expects a real server's 422.
            raise kmock.KubernetesError(status=422, reason="Invalid", message=str(exc)) from exc
        finally:
            self._forget(request)

    def _forget(self, request: kmock.Request) -> None:
        """Drop an answered request from kmock's history, which this emulator never reads (it keeps `calls`).

        kmock routes each request by scanning every request it has kept, so serving is quadratic in the requests
        served: a few thousand make each request take tens of milliseconds. Only the ones in flight are kept.
        """
        history = self._requests
        for index in range(len(history) - 1, -1, -1):
            if history[index] is request:
                del history[index]
                return

    def _complete_new_object(self, body: JsonObject, namespace: str | None) -> None:
        metadata = body.setdefault("metadata", {})
        if not metadata.get("name") and metadata.get("generateName"):
            metadata["name"] = metadata["generateName"] + secrets.token_hex(3)[:5]
        if namespace is not None:
            metadata["namespace"] = namespace
        metadata["uid"] = str(uuid.uuid4())
        metadata["creationTimestamp"] = _now()
        metadata["generation"] = 1
        metadata["resourceVersion"] = self._next_resource_version()

    def _current_generation(self, request: kmock.Request) -> int:
        assert request.resource is not None and request.name is not None  # only called for named objects
        key = (request.resource, request.namespace, request.name)
        if key in self.objects and not self.objects[key].deleted:
            return int(self.objects[key].get("metadata", {}).get("generation", 1))
        return 1

    def _complete_merge_patch(self, request: kmock.Request, patch: JsonObject) -> None:
        assert request.resource is not None  # only called for Kubernetes requests
        if request.subresource == "status" and self._has_status_subresource(request.resource):
            status = patch.get("status")
            patch.clear()
            if status is not None:
                patch["status"] = status
        elif request.subresource is None and self._has_status_subresource(request.resource):
            patch.pop("status", None)
        metadata = patch.setdefault("metadata", {})
        metadata["resourceVersion"] = self._next_resource_version()
        if request.subresource is None and "spec" in patch:
            metadata["generation"] = self._current_generation(request) + 1

    def _complete_json_patch(self, request: kmock.Request, operations: list[Any]) -> None:
        assert request.resource is not None  # only called for Kubernetes requests
        if self._has_status_subresource(request.resource):
            if request.subresource == "status":
                operations[:] = [op for op in operations if str(op.get("path", "")).startswith("/status")]
            elif request.subresource is None:
                operations[:] = [op for op in operations if not str(op.get("path", "")).startswith("/status")]
        touches_spec = any(str(op.get("path", "")).startswith("/spec") for op in operations)
        operations.append({"op": "add", "path": "/metadata/resourceVersion", "value": self._next_resource_version()})
        if request.subresource is None and touches_spec:
            generation = self._current_generation(request) + 1
            operations.append({"op": "add", "path": "/metadata/generation", "value": generation})

    @override
    async def _serve_list(self, request: kmock.Request) -> kmock.Payload:
        listing = cast(JsonObject, await super()._serve_list(request))
        listing["items"] = [item for item in listing["items"] if _object_selected(item, request.params)]
        listing["metadata"] = {"resourceVersion": str(self._resource_version)}
        return listing

    @override
    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[kmock.Payload]:
        since = int(request.params.get("resourceVersion") or 0)
        async for event in super()._serve_watch(request):
            if not isinstance(event, dict):
                yield event
                continue
            obj = event.get("object", {})
            # kmock replays every object as ADDED on each watch; a real server only sends what changed since `since`.
            replayed = event.get("type") == "ADDED" and int(obj.get("metadata", {}).get("resourceVersion", 0)) <= since
            if not replayed and _object_selected(obj, request.params):
                yield event

    def live_objects(self) -> list[tuple[kmock.resource, JsonObject]]:
        return [(key[0], obj.raw) for key, obj in self.objects.items() if not obj.deleted]




def _register_crd(resources: kmock.ResourcesArray, crd: Mapping[str, Any]) -> None:
    spec = crd["spec"]
    names = spec["names"]
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        resources[f"{spec['group']}/{version['name']}/{names['plural']}"] = kmock.ResourceInfo(
            kind=names["kind"],
            singular=names.get("singular", names["kind"].lower()),
            namespaced=spec.get("scope", "Namespaced") == "Namespaced",
            verbs={"list", "watch", "get", "create", "patch", "update", "delete"},
            shortnames=set(names.get("shortNames", [])),
            categories=set(names.get("categories", [])),
            subresources=set(version.get("subresources", {})),
        )


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
        self._handler: _ClusterEmulator | None = None
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
        def snapshot() -> list[ApiCall]:
            assert self._handler is not None
            return list(self._handler.calls)
        return self._call(snapshot)

    def operator_calls(self) -> list[ApiCall]:
        """The requests not made by this test tooling (emulator, :class:`KubeClient`, local kubelet)."""
        return [call for call in self.api_calls() if call.user_agent not in TEST_USER_AGENTS]

    def _call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the emulator's loop, so it never sees kmock's structures in the middle of a change."""
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
        async with _ClusterEmulator() as handler, kmock.Server(handler, user_agent=EMULATOR_USER_AGENT) as server:
            handler.resources.load_bundled()
            for namespace in self._namespaces:
                handler.add_namespace(namespace)
            for crd in self._crds:
                _register_crd(handler.resources, crd)
            self._handler = handler
            self._url = str(server.url).rstrip("/")
            collector = asyncio.create_task(self._collect_garbage(handler, server.client))
            self._ready.set()
            await self._stopping.wait()
            collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await collector

    async def _collect_garbage(self, handler: _ClusterEmulator, client: aiohttp.ClientSession) -> None:
        while True:
            await asyncio.sleep(GC_PERIOD_S)
            live = handler.live_objects()
            uids = {body.get("metadata", {}).get("uid") for _, body in live}
            for resource, body in live:
                metadata = body.get("metadata", {})
                owners = [ref.get("uid") for ref in metadata.get("ownerReferences") or []]
                if owners and not uids.intersection(owners) and not metadata.get("deletionTimestamp"):
                    api_version = f"{resource.group}/{resource.version}" if resource.group else str(resource.version)
                    path = api_path(api_version, str(resource.plural), metadata.get("namespace"), metadata["name"])
                    async with client.delete(path) as response:
                        if response.status not in (200, 404):
                            response.raise_for_status()


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

    async def delete(self, api_version: str, plural: str, name: str, *,
                     namespace: str | None = "default") -> JsonObject | None:
        """The object as last seen, or None when it did not exist."""
        return await self._request("DELETE", api_path(api_version, plural, namespace, name))

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
