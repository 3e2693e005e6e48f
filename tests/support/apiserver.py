"""An in-memory Kubernetes API server on aiohttp, for the integration and end-to-end tiers.

:class:`Store` holds the objects and the API semantics, free of HTTP (``tests/unit/test_apiserver.py`` tests it
directly); :class:`ApiServer` serves it as the Kubernetes REST API and records every request as an :class:`ApiCall`;
:mod:`tests.support.emulator` runs it in a thread of its own.

What it does, as a real API server does:

* discovery (``/version``, ``/api``, ``/api/v1``, ``/apis``, ``/apis/<group>[/<version>]``, with ``<plural>/status``
  where there is that subresource, which Kopf reads, and ``pods/binding``) of the builtin resources (pods, services, core ``v1`` events:
  Kopf posts nothing to ``events.k8s.io``, configmaps, secrets, persistentvolumeclaims, serviceaccounts,
  ``networking.k8s.io`` networkpolicies; and,
  read-only, the namespaces and the CRDs it was started with) and of every served version of those CRDs;
* create (POST): the server sets ``uid``, ``creationTimestamp``, ``generation: 1``, ``resourceVersion``, the URL's
  namespace, ``apiVersion`` and ``kind``; ``generateName`` makes a unique name; a taken name is 409 AlreadyExists;
  ``status`` is dropped where the resource has the status subresource;
* get; list (all namespaces when the URL names none; the list's ``metadata.resourceVersion``); watch
  (``?watch=true``, one JSON event a line): without ``resourceVersion`` (or with ``0``) it starts with an ``ADDED``
  for every object; from a resourceVersion it replays the changes since then, kept for the last
  :data:`HISTORY_PER_RESOURCE` changes of each resource (older: an ``ERROR`` event with a 410 Expired ``Status``,
  upon which Kopf lists again); ``timeoutSeconds`` ends the stream, else only the client or the shutdown does;
* ``labelSelector`` (``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``, ``k notin (a,b)``, ``k``, ``!k``) and
  ``fieldSelector`` (``=``, ``==``, ``!=`` on any dotted path) on list and watch; an object that starts or stops
  matching a watch's selectors arrives as ``ADDED`` or ``DELETED``;
* PATCH as ``application/merge-patch+json`` (RFC 7386: objects merge, ``null`` removes, lists are replaced whole),
  ``application/strategic-merge-patch+json`` (taken as a merge patch: no directives, no merging of lists by key,
  which is all this project and Kopf need) or ``application/json-patch+json`` (RFC 6902; a failed ``test``, such as
  Kopf's test of the resourceVersion, is 422 Invalid); server-side apply (``application/apply-patch+yaml``) is 415;
* PUT replaces the object; a PUT or patch whose result has a ``metadata.resourceVersion`` other than the current one
  is 409 Conflict (optimistic concurrency); without one, the write is unconditional;
* on every write, the server's metadata (name, namespace, uid, creationTimestamp, generation, resourceVersion,
  deletionTimestamp) stays the server's; a write that changes nothing stores nothing (no new resourceVersion, no
  event); ``generation`` grows when anything but ``metadata`` and ``status`` changes; empty ``labels``,
  ``annotations``, ``finalizers`` and ``ownerReferences`` are dropped (Go's ``omitempty``);
* the status subresource: a write to ``.../status`` changes ``status`` only, a write to the object never does;
  ``.../status`` of a resource without the subresource is 404;
* custom resources are pruned, defaulted and validated against their CRD version's schema (CEL rules included) on
  every create, update and patch, object and status alike, as :mod:`tests.support.schema` describes; an invalid one
  is a 422 Invalid whose ``details.causes`` name the fields;
* DELETE of an object with finalizers sets ``metadata.deletionTimestamp`` (and ``deletionGracePeriodSeconds: 0``,
  and bumps ``generation``); it goes (``DELETED``) when a write empties its finalizers; a missing object is 404;
* graceful deletion of pods: a pod bound to a node (``spec.nodeName``) and not yet ``Succeeded`` or ``Failed`` is not
  removed by a DELETE but marked Terminating: ``deletionGracePeriodSeconds`` from the DeleteOptions'
  ``gracePeriodSeconds`` (body or query), else the pod's ``spec.terminationGracePeriodSeconds``, else 30;
  ``deletionTimestamp`` that much later than now; ``generation`` bumped; a ``MODIFIED`` event. It stays, name taken,
  until a DELETE with a shorter grace period (0: what a kubelet sends once the containers stopped, or a force delete)
  or :meth:`Store.finish_termination`; a longer or no grace period changes nothing. Finalizers hold it after that too.
  Any other pod (not bound, or finished) goes at once;
* ``pods/<name>/binding`` (POST a ``Binding``): sets ``spec.nodeName`` and the ``PodScheduled`` condition; a bound or
  Terminating pod is 409. Otherwise a pod's spec is immutable (422 Forbidden) but for the containers' images,
  ``activeDeadlineSeconds``, ``tolerations`` and ``terminationGracePeriodSeconds``;
* a Secret's ``stringData`` is write-only: on every create and update its values are merged into ``data``,
  base64-encoded (``stringData`` wins over ``data``), and ``stringData`` is not stored;
* DeleteOptions ``preconditions`` (``uid``, ``resourceVersion``): 409 Conflict when they do not hold;
* lost nodes: nothing a kubelet (a request with :data:`KUBELET_USER_AGENT`) sends about a pod bound to a node in
  :attr:`ApiServer.lost_nodes`, or to bind one there, is taken (503): its pods keep their last status and, deleted,
  stay Terminating for ever; a force delete by anyone else, or :meth:`Store.finish_termination`, still removes them;
* owner-reference garbage collection: :meth:`Store.collect_garbage` (the emulator runs it every 0.2 s) deletes, by the
  same delete (with the owner's uid as precondition), every object whose owners (by uid) are all gone: a bound pod
  goes Terminating like any other;
* errors are ``Status`` objects with a real server's HTTP code, ``reason`` and ``message`` (and ``details``: the
  causes of a 422, the name and kind of a 409);
* scripted faults (:attr:`ApiServer.faults`, see :mod:`tests.support.faults`): a request that a rule matches is
  answered late (``delay_s``), or with an error in a real server's words (:data:`FAULT_WORDS`: 403 as a ResourceQuota
  refuses, 422 as an admission webhook denies, 409, 429 with ``Retry-After``, 500, 503, 504), or, for a watch, cut
  after some events (``drop_watch``: the stream ends, as when a server or a load balancer closes it; streams already
  open are cut too). Faults are decided after the path, the method and the body were found well-formed, and before the
  store sees the request; the garbage collector is never refused.

What it does not do (so do not test it against this server, or add it here first):

* builtin resources are stored as sent (no schema, no defaults, no checks of names or labels; a Secret's
  ``stringData`` aside, see above), and so is the ``metadata`` of custom resources; the gaps of the CRD schema checks
  are listed in :mod:`tests.support.schema`; no conversion between CRD versions (each served version is a
  collection of its own);
* no admission (webhooks, quotas, limit ranges, pod defaults) but the refusals a scripted fault plays, no
  authentication, no RBAC: every request is allowed (and recorded, for the RBAC test);
* no server-side apply, no true strategic merge, no dry-run, no ``deletecollection`` (405), no pagination (``limit``
  and ``continue`` are ignored), no watch bookmarks or ``sendInitialEvents``, no reads at an older resourceVersion,
  no ``managedFields``;
* DeleteOptions ``propagationPolicy``, ``orphanDependents`` and ``dryRun`` are ignored: dependents are always
  collected in the background, never orphaned, never in the foreground; a pod's deletion that its grace period
  outlives is not forced when ``deletionTimestamp`` passes (no node controller, no pod garbage collector); a lost node
  is not marked NotReady and its pods are not evicted;
* no namespace lifecycle: namespaces and CRDs are read-only (405), objects may live in a namespace that does not
  exist, and no CRD can be added while the server runs;
* no watch ends with an ``ERROR`` event but the 410 of a too-old resourceVersion, and no fault is injected in the
  middle of a request (after the store changed): a fault either refuses a request or lets it through whole;
* no controllers but the garbage collector: no kubelet (see :mod:`tests.support.kubelet`), no scheduler (a pod is
  bound by the local kubelet, by its test, or by a ``spec.nodeName`` set at creation), no Deployments, ReplicaSets or
  Service endpoints; no pod defaults: pods get no status but from a binding or a kubelet;
* no stale reads: a get or list always sees the latest write.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import dataclasses
import datetime
import http
import itertools
import json
import re
import secrets
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import jsonpatch
from aiohttp import web

from tests.support.faults import Fault, FaultTable
from tests.support.schema import FieldError, StructuralSchema

JsonObject = dict[str, Any]
Key = tuple[str | None, str]
"""An object's namespace (None when cluster-scoped) and name."""
Selected = Callable[[Mapping[str, Any]], bool]

# Requests from the test tooling carry these user agents, so that the server can tell them apart from the operator's
# own (for the RBAC test, for faults, and to cut a lost node's kubelet off). The garbage collector works on the store
# directly and sends no requests.
EMULATOR_USER_AGENT = "bigmodel-tests-emulator"
CLIENT_USER_AGENT = "bigmodel-tests-client"
KUBELET_USER_AGENT = "bigmodel-tests-kubelet"
TEST_USER_AGENTS = frozenset({EMULATOR_USER_AGENT, CLIENT_USER_AGENT, KUBELET_USER_AGENT})

HISTORY_PER_RESOURCE = 10_000
"""Changes each resource keeps for watches that resume from a resourceVersion (etcd keeps about 5 minutes)."""
SERVER_METADATA = (
    "name",
    "namespace",
    "uid",
    "creationTimestamp",
    "generation",
    "resourceVersion",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
)
OMITTED_WHEN_EMPTY = ("labels", "annotations", "finalizers", "ownerReferences")
NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # the API server's: no vowels, so no words in generated names
NO_SUCH_RESOURCE = "the server could not find the requested resource"
VERSION = {"major": "1", "minor": "31", "gitVersion": "v1.31.0-bigmodel-tests", "platform": "linux/amd64"}
DEFAULT_GRACE_PERIOD_S = 30
"""A pod's ``terminationGracePeriodSeconds`` when its spec has none (the API server's pod default)."""
POD_MUTABLE_SPEC = ("activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds")
"""What a pod update may change in ``spec`` besides the containers' images (``tolerations``: only additions, really)."""
POD_SPEC_FORBIDDEN = (
    "pod updates may not change fields other than `spec.containers[*].image`,"
    "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions "
    "to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was "
    "previously negative)"
)
STALE = "the object has been modified; please apply your changes to the latest version and try again"


@dataclass(frozen=True)
class Resource:
    """A resource type the server serves, as discovery describes it."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    status: bool = False
    """Whether it has the status subresource."""
    read_only: bool = False
    """Served from what the server was started with: any write answers 405."""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    schema: StructuralSchema | None = dataclasses.field(default=None, compare=False, repr=False)
    """A CRD version's schema: its objects are pruned, defaulted and validated with it."""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """How a real server names the resource in its messages: ``pods``, ``bigmodeljobs.bigmodel.dev``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


NAMESPACES = Resource(
    "", "v1", "namespaces", "Namespace", namespaced=False, status=True, read_only=True, short_names=("ns",)
)
PODS = Resource("", "v1", "pods", "Pod", status=True, short_names=("po",), categories=("all",))
"""The one resource with graceful deletion and the ``binding`` subresource."""
SECRETS = Resource("", "v1", "secrets", "Secret")
"""Its write-only ``stringData`` is merged into ``data``."""
CRDS = Resource(
    "apiextensions.k8s.io",
    "v1",
    "customresourcedefinitions",
    "CustomResourceDefinition",
    namespaced=False,
    status=True,
    read_only=True,
    short_names=("crd", "crds"),
)
BUILTIN_RESOURCES = (
    NAMESPACES,
    CRDS,
    PODS,
    Resource("", "v1", "services", "Service", status=True, short_names=("svc",), categories=("all",)),
    Resource("", "v1", "events", "Event", short_names=("ev",)),
    Resource("", "v1", "configmaps", "ConfigMap", short_names=("cm",)),
    SECRETS,
    Resource("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", status=True, short_names=("pvc",)),
    Resource("", "v1", "serviceaccounts", "ServiceAccount", short_names=("sa",)),
    Resource("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", short_names=("netpol",)),
)


def crd_resources(crd: Mapping[str, Any]) -> list[Resource]:
    """The resources a CustomResourceDefinition serves: one per served version."""
    spec, names = crd["spec"], crd["spec"]["names"]
    return [
        Resource(
            spec["group"],
            version["name"],
            names["plural"],
            names["kind"],
            namespaced=spec.get("scope", "Namespaced") == "Namespaced",
            status="status" in (version.get("subresources") or {}),
            short_names=tuple(names.get("shortNames", ())),
            categories=tuple(names.get("categories", ())),
            schema=StructuralSchema(version["schema"]["openAPIV3Schema"]) if "schema" in version else None,
        )
        for version in spec["versions"]
        if version.get("served", True)
    ]


class StatusError(Exception):
    """A request the server refuses: answered as a ``Status`` object with this HTTP code and reason."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: JsonObject | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.headers = dict(headers or {})

    def status(self) -> JsonObject:
        status = {
            "apiVersion": "v1",
            "kind": "Status",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            status["details"] = self.details
        return status


def conflict(qualified: str, name: str, why: str) -> StatusError:
    """A 409 Conflict in a real server's words; `qualified` names the resource (``pods``, ``pods/binding``)."""
    return StatusError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {qualified} "{name}": {why}',
        details={"name": name, "kind": qualified},
    )


def invalid(kind: str, group: str, name: str, errors: list[FieldError]) -> StatusError:
    """A 422 Invalid with one cause per field error, as a real server answers a body that fails validation."""
    listed = str(errors[0]) if len(errors) == 1 else "[" + ", ".join(map(str, errors)) + "]"
    details: JsonObject = {
        "name": name,
        "group": group,
        "kind": kind,
        "causes": [{"reason": e.reason, "message": e.body(), "field": e.field} for e in errors],
    }
    if not group:
        del details["group"]
    return StatusError(
        422, "Invalid", f'{kind}{"." + group if group else ""} "{name}" is invalid: {listed}', details=details
    )


@dataclass(frozen=True)
class DeleteOptions:
    """What a DELETE asks for: its ``DeleteOptions`` body, or the same fields as query parameters."""

    grace_period_seconds: int | None = None
    """Pods only: how long the kubelet may take to stop the containers; 0 removes the pod at once."""
    uid: str | None = None
    resource_version: str | None = None
    """Preconditions: the delete is 409 Conflict unless the object still has this uid / resourceVersion."""

    @classmethod
    def parse(cls, body: Any, query: Mapping[str, str]) -> DeleteOptions:
        if not isinstance(body, dict):
            raise StatusError(400, "BadRequest", "the request body is not a DeleteOptions object")
        grace = body.get("gracePeriodSeconds", query.get("gracePeriodSeconds"))
        preconditions = body.get("preconditions") or {}
        try:
            seconds = None if grace is None else int(grace)
        except (TypeError, ValueError):
            raise StatusError(400, "BadRequest", f"invalid gracePeriodSeconds: {grace!r}") from None
        if seconds is not None and seconds < 0:
            seconds = 1  # as a real server takes a negative grace period
        return cls(seconds, preconditions.get("uid"), preconditions.get("resourceVersion"))


# Selectors. Each is parsed once per request into one predicate per term, so a bad one answers 400 even when no
# object is there to test, and a list of a thousand objects does not parse it a thousand times.


def _split_selector(selector: str) -> list[str]:
    """The terms of a selector: split at the commas outside parentheses (not those of ``in (a,b)``)."""
    return [term.strip() for term in re.split(r",(?![^(]*\))", selector) if term.strip()]


_LABEL_TERM = re.compile(
    r"^(?P<negated>!)?\s*(?P<key>[\w./-]+)\s*"
    r"(?:(?P<op>==|=|!=)\s*(?P<value>[\w./-]*)|\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?$"
)
_FIELD_TERM = re.compile(r"^(?P<path>[\w.]+)\s*(?P<op>==|=|!=)\s*(?P<value>.*)$")


def _label_term(term: str) -> Selected:
    match = _LABEL_TERM.match(term)
    if match is None:
        raise StatusError(400, "BadRequest", f"unable to parse requirement: {term!r}")
    key, value = match["key"], match["value"]
    if match["negated"]:
        return lambda labels: key not in labels
    if match["op"] in ("=", "=="):
        return lambda labels: labels.get(key) == value
    if match["op"] == "!=":
        return lambda labels: labels.get(key) != value
    if match["setop"] is not None:
        values, inside = {item.strip() for item in match["values"].split(",")}, match["setop"] == "in"
        return lambda labels: (labels.get(key) in values) == inside
    return lambda labels: key in labels


def _field_term(term: str) -> Selected:
    match = _FIELD_TERM.match(term)
    if match is None:
        raise StatusError(400, "BadRequest", f"invalid field selector: {term!r}")
    path, expected, equal = match["path"].split("."), match["value"], match["op"] != "!="

    def test(obj: Mapping[str, Any]) -> bool:
        value: Any = obj
        for part in path:
            value = value.get(part) if isinstance(value, Mapping) else None
        return (("" if value is None else str(value)) == expected) == equal

    return test


def _equalities(label_selector: str) -> list[tuple[str, str]]:
    """The ``k=v`` terms of a label selector, which the label index can answer."""
    terms = [_LABEL_TERM.match(term) for term in _split_selector(label_selector)]
    return [(t["key"], t["value"]) for t in terms if t is not None and not t["negated"] and t["op"] in ("=", "==")]


def labels_match(labels: Mapping[str, str], selector: str) -> bool:
    """Whether labels satisfy a Kubernetes label selector string (equality- and set-based)."""
    return all(term(labels) for term in map(_label_term, _split_selector(selector)))


def fields_match(obj: Mapping[str, Any], selector: str) -> bool:
    """Whether an object satisfies a field selector (``path=value``, ``path==value``, ``path!=value``)."""
    return all(term(obj) for term in map(_field_term, _split_selector(selector)))


def selection(label_selector: str = "", field_selector: str = "") -> Selected:
    """One predicate for both selectors of a request; raises a 400 StatusError for a malformed one."""
    label_terms = [_label_term(term) for term in _split_selector(label_selector)]
    field_terms = [_field_term(term) for term in _split_selector(field_selector)]

    def selected(obj: Mapping[str, Any]) -> bool:
        labels = obj["metadata"].get("labels") or {}
        return all(term(labels) for term in label_terms) and all(term(obj) for term in field_terms)

    return selected


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, ``null`` removes a key, anything else (lists too) replaces."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def _now(later_s: float = 0) -> str:
    moment = datetime.datetime.now(tz=datetime.timezone.utc) + datetime.timedelta(seconds=later_s)
    return moment.strftime(TIME_FORMAT)


def _earlier(timestamp: str, seconds: float) -> str:
    moment = datetime.datetime.strptime(timestamp, TIME_FORMAT) - datetime.timedelta(seconds=seconds)
    return moment.strftime(TIME_FORMAT)


def _content(obj: JsonObject) -> JsonObject:
    """What ``generation`` counts changes of: everything but metadata and status."""
    return {key: value for key, value in obj.items() if key not in ("metadata", "status")}


@dataclass(frozen=True)
class Change:
    """One stored write, as watches see it: the object after it (the last state, for DELETED) and before it."""

    resource_version: int
    type: str
    obj: JsonObject
    previous: JsonObject | None


class Watch:
    """The events of one watch stream: one resource, one namespace or all, only the objects its selectors pick."""

    def __init__(self, watches: set[Watch], namespace: str | None, selected: Selected) -> None:
        self._watches = watches
        self._namespace = namespace
        self._selected = selected
        self._queue: asyncio.Queue[JsonObject | None] = asyncio.Queue()
        watches.add(self)

    def offer(self, change: Change) -> None:
        if self._namespace is not None and change.obj["metadata"].get("namespace") != self._namespace:
            return
        # As a real server does, an object that starts or stops matching the selectors is ADDED or DELETED here.
        before = change.previous is not None and self._selected(change.previous)
        after = change.type != "DELETED" and self._selected(change.obj)
        kind = "MODIFIED" if before and after else "ADDED" if after else "DELETED" if before else None
        if kind is not None:
            self._queue.put_nowait({"type": kind, "object": change.obj})

    def expire(self, since: int, oldest: int) -> None:
        """End the stream with a 410, as a server does to a watch from a resourceVersion it no longer has."""
        error = StatusError(410, "Expired", f"too old resource version: {since} ({oldest})")
        self._queue.put_nowait({"type": "ERROR", "object": error.status()})
        self.end()

    def end(self) -> None:
        self._queue.put_nowait(None)

    async def next(self, deadline: float | None = None) -> JsonObject | None:
        """The next event, or None once the stream ended or the loop time `deadline` passed."""
        if not self._queue.empty():  # the common case under load: no task, no timer
            return self._queue.get_nowait()
        if deadline is None:
            return await self._queue.get()
        try:
            return await asyncio.wait_for(self._queue.get(), max(0.0, deadline - asyncio.get_running_loop().time()))
        except asyncio.TimeoutError:
            return None

    def __enter__(self) -> Watch:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._watches.discard(self)


class Store:
    """The objects of every served resource, and the API semantics of reading and writing them.

    Every write stores a new dict and never changes a stored one, so the objects handed out (and queued for watches)
    stay as they were; callers must not change them either. No request costs time in the requests served before it:
    a get, create, patch or delete costs time in its one object, a list or the start of a watch in the objects of its
    resource (only those with the label, for ``k=v`` label terms, which an index answers).
    """

    def __init__(self, resources: Iterable[Resource], history: int = HISTORY_PER_RESOURCE) -> None:
        self._resources = {(r.group, r.version, r.plural): r for r in resources}
        self._objects: dict[Resource, dict[Key, JsonObject]] = {r: {} for r in self._resources.values()}
        self._history: dict[Resource, deque[Change]] = {r: deque(maxlen=history) for r in self._resources.values()}
        self._forgotten: dict[Resource, int] = {}  # the newest resourceVersion dropped from a history
        self._watches: dict[Resource, set[Watch]] = {r: set() for r in self._resources.values()}
        self._labelled: dict[Resource, dict[tuple[str, str], set[Key]]] = {r: {} for r in self._resources.values()}
        self._resource_version = 0

    @property
    def resources(self) -> list[Resource]:
        return list(self._resources.values())

    @property
    def resource_version(self) -> str:
        return str(self._resource_version)

    def resource(self, group: str, version: str, plural: str) -> Resource:
        try:
            return self._resources[(group, version, plural)]
        except KeyError:
            raise StatusError(404, "NotFound", NO_SUCH_RESOURCE) from None

    def _key(self, resource: Resource, namespace: str | None, name: str) -> Key:
        if resource.namespaced != (namespace is not None):
            raise StatusError(404, "NotFound", NO_SUCH_RESOURCE)
        return namespace, name

    def _check_collection(self, resource: Resource, namespace: str | None) -> None:
        if namespace is not None and not resource.namespaced:
            raise StatusError(404, "NotFound", NO_SUCH_RESOURCE)

    def get(self, resource: Resource, namespace: str | None, name: str) -> JsonObject:
        try:
            return self._objects[resource][self._key(resource, namespace, name)]
        except KeyError:
            raise StatusError(404, "NotFound", f'{resource.qualified} "{name}" not found') from None

    def list(
        self, resource: Resource, namespace: str | None = None, label_selector: str = "", field_selector: str = ""
    ) -> list[JsonObject]:
        """The matching objects in one namespace (all, when None), in namespace and name order."""
        self._check_collection(resource, namespace)
        selected = selection(label_selector, field_selector)
        objects = self._objects[resource]
        # The operator lists each job's pods and services by label: scanning every pod for each of those lists would
        # make a thousand jobs quadratic, so `k=v` terms first narrow the candidates down through the label index.
        indexed = [self._labelled[resource].get(pair, set()) for pair in _equalities(label_selector)]
        keys: Iterable[Key] = set.intersection(*indexed) if indexed else objects
        found = [key for key in keys if namespace in (None, key[0]) and selected(objects[key])]
        return [objects[key] for key in sorted(found, key=lambda key: (key[0] or "", key[1]))]

    def watch(
        self,
        resource: Resource,
        namespace: str | None = None,
        since: str | None = None,
        label_selector: str = "",
        field_selector: str = "",
    ) -> Watch:
        """A watch from `since` (the changes after that resourceVersion), or from now with the current objects."""
        self._check_collection(resource, namespace)
        selected = selection(label_selector, field_selector)
        current = self.list(resource, namespace) if not since or since == "0" else []
        try:
            version = int(since or 0)
        except ValueError:
            raise StatusError(400, "BadRequest", f"invalid resourceVersion: {since!r}") from None
        watch = Watch(self._watches[resource], namespace, selected)
        for obj in current:  # the watch applies the selectors
            watch.offer(Change(self._resource_version, "ADDED", obj, None))
        history = self._history[resource]
        if version and version < self._forgotten.get(resource, 0):
            watch.expire(version, history[0].resource_version)
        elif version:
            for change in list(itertools.takewhile(lambda c: c.resource_version > version, reversed(history)))[::-1]:
                watch.offer(change)
        return watch

    def create(self, resource: Resource, namespace: str | None, body: JsonObject) -> JsonObject:
        obj = copy.deepcopy(body)
        metadata = obj.setdefault("metadata", {})
        if resource.namespaced and metadata.get("namespace", namespace) != namespace:
            raise StatusError(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
            )
        if not metadata.get("name"):
            if not metadata.get("generateName"):
                raise StatusError(422, "Invalid", "metadata.name: Required value: name or generateName is required")
            metadata["name"] = metadata["generateName"] + "".join(secrets.choice(NAME_ALPHABET) for _ in range(5))
        key = self._key(resource, namespace, metadata["name"])
        if key in self._objects[resource]:
            raise StatusError(409, "AlreadyExists", f'{resource.qualified} "{metadata["name"]}" already exists')
        for field in SERVER_METADATA:
            if field != "name":
                metadata.pop(field, None)
        if namespace is not None:
            metadata["namespace"] = namespace
        metadata.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        obj.update(apiVersion=resource.api_version, kind=resource.kind)
        if resource.status:
            obj.pop("status", None)
        _omit_empty(metadata)
        return self._store(resource, key, "ADDED", _admit(resource, obj, None), None)

    def patch(
        self,
        resource: Resource,
        namespace: str | None,
        name: str,
        patch: Any,
        json_patch: bool = False,
        subresource: str | None = None,
    ) -> JsonObject:
        """A merge patch (RFC 7386), or a JSON patch (RFC 6902) when `json_patch`."""
        if not json_patch:
            return self._update(resource, namespace, name, subresource, lambda obj: merge_patch(obj, patch))
        if not isinstance(patch, list):
            raise StatusError(400, "BadRequest", "a JSON patch must be a list of operations")

        def apply(obj: JsonObject) -> Any:
            try:
                return jsonpatch.apply_patch(obj, patch, in_place=True)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                raise StatusError(422, "Invalid", f"the JSON patch could not be applied: {exc}") from exc

        return self._update(resource, namespace, name, subresource, apply)

    def replace(
        self, resource: Resource, namespace: str | None, name: str, body: JsonObject, subresource: str | None = None
    ) -> JsonObject:
        """PUT: the object becomes `body`, within what a client may change."""
        return self._update(resource, namespace, name, subresource, lambda _: copy.deepcopy(body))

    def delete(
        self, resource: Resource, namespace: str | None, name: str, options: DeleteOptions = DeleteOptions()
    ) -> JsonObject:
        """Delete as a real server does (see the module docstring); the object as it ends up."""
        current = self.get(resource, namespace, name)
        _check_preconditions(resource, current, options)
        metadata, key = current["metadata"], (namespace, name)
        if metadata.get("deletionTimestamp"):
            return self._delete_again(resource, key, current, options.grace_period_seconds)
        grace = _grace_period(current, options) if resource == PODS else None
        if grace is None and not metadata.get("finalizers"):
            return self._store(resource, key, "DELETED", {**current, "metadata": {**metadata}}, current)
        marked = {
            **current,
            "metadata": {
                **metadata,
                "deletionTimestamp": _now(grace or 0),
                "deletionGracePeriodSeconds": grace or 0,
                "generation": metadata["generation"] + 1,
            },
        }
        return self._store(
            resource, key, "MODIFIED" if grace or metadata.get("finalizers") else "DELETED", marked, current
        )

    def _delete_again(self, resource: Resource, key: Key, current: JsonObject, grace: int | None) -> JsonObject:
        """A delete of an object already being deleted: only a shorter grace period changes anything."""
        metadata = current["metadata"]
        pending = metadata.get("deletionGracePeriodSeconds") or 0
        if grace is None or grace >= pending:
            return current
        shortened = {
            **current,
            "metadata": {
                **metadata,
                "deletionGracePeriodSeconds": grace,
                "deletionTimestamp": _earlier(metadata["deletionTimestamp"], pending - grace),
            },
        }
        finished = grace == 0 and not metadata.get("finalizers")
        return self._store(resource, key, "DELETED" if finished else "MODIFIED", shortened, current)

    def bind(self, namespace: str, name: str, node: str) -> JsonObject:
        """``POST pods/<name>/binding``: assign the pod to a node, once; the pod as it ends up."""
        pod = self.get(PODS, namespace, name)
        if pod["metadata"].get("deletionTimestamp"):
            raise conflict("pods/binding", name, f"pod {name} is being deleted, cannot be assigned to a host")
        bound_to = (pod.get("spec") or {}).get("nodeName")
        if bound_to:
            raise conflict("pods/binding", name, f'pod {name} is already assigned to node "{bound_to}"')
        status = pod.get("status") or {}
        conditions = [c for c in status.get("conditions") or [] if c.get("type") != "PodScheduled"]
        scheduled = {"type": "PodScheduled", "status": "True", "lastTransitionTime": _now()}
        # Straight to storage, as the real binding is: no generation bump, the spec's immutability does not apply.
        bound = {
            **pod,
            "metadata": {**pod["metadata"]},
            "spec": {**pod.get("spec", {}), "nodeName": node},
            "status": {**status, "conditions": [*conditions, scheduled]},
        }
        return self._store(PODS, (namespace, name), "MODIFIED", bound, pod)

    def finish_termination(self, namespace: str, name: str) -> JsonObject:
        """What a kubelet does once a Terminating pod's containers stopped: delete it with grace period 0."""
        pod = self.get(PODS, namespace, name)
        if not pod["metadata"].get("deletionTimestamp"):
            raise ValueError(f"pod {namespace}/{name} is not terminating")
        return self.delete(PODS, namespace, name, DeleteOptions(grace_period_seconds=0, uid=pod["metadata"]["uid"]))

    def collect_garbage(self) -> None:
        """Delete every object whose owners are all gone (by uid), as the background propagation would."""
        uids = {obj["metadata"]["uid"] for objects in self._objects.values() for obj in objects.values()}
        orphans = [
            (resource, key, obj["metadata"]["uid"])
            for resource, objects in self._objects.items()
            for key, obj in objects.items()
            if obj["metadata"].get("ownerReferences")
            and not obj["metadata"].get("deletionTimestamp")
            and not uids.intersection(ref.get("uid") for ref in obj["metadata"]["ownerReferences"])
        ]
        for resource, (namespace, name), uid in orphans:
            self.delete(resource, namespace, name, DeleteOptions(uid=uid))  # the uid, as the real collector does

    def close(self) -> None:
        """End every watch stream (the server is shutting down)."""
        for watches in self._watches.values():
            for watch in watches:
                watch.end()

    def _update(
        self,
        resource: Resource,
        namespace: str | None,
        name: str,
        subresource: str | None,
        edit: Callable[[JsonObject], Any],
    ) -> JsonObject:
        current = self.get(resource, namespace, name)
        candidate = edit(copy.deepcopy(current))
        if not isinstance(candidate, dict) or not isinstance(candidate.get("metadata", {}), dict):
            raise StatusError(422, "Invalid", "the result is not an object with object metadata")
        sent_version = candidate.get("metadata", {}).get("resourceVersion")
        if sent_version and sent_version != current["metadata"]["resourceVersion"]:
            raise conflict(resource.qualified, name, STALE)
        if subresource == "status":
            updated = {**current, "metadata": {**current["metadata"]}, "status": candidate.get("status")}
            if updated["status"] is None:
                del updated["status"]
        else:
            updated = candidate
            if resource.status:
                updated.pop("status", None)
                if "status" in current:
                    updated["status"] = current["status"]
        metadata = updated.setdefault("metadata", {})
        for field in SERVER_METADATA:
            if field in current["metadata"]:
                metadata[field] = current["metadata"][field]
            else:
                metadata.pop(field, None)
        updated.update(apiVersion=current["apiVersion"], kind=current["kind"])
        _omit_empty(metadata)
        updated = _admit(resource, updated, current)
        if updated == current:
            return current  # nothing changed: nothing stored, no event, the same resourceVersion
        if resource == PODS and _frozen_pod_spec(updated) != _frozen_pod_spec(current):
            raise invalid("Pod", "", name, [FieldError("FieldValueForbidden", "spec", detail=POD_SPEC_FORBIDDEN)])
        if _content(updated) != _content(current):
            metadata["generation"] = current["metadata"]["generation"] + 1
        # The last finalizer gone releases an object being deleted, unless a pod's grace period is still running.
        released = (
            metadata.get("deletionTimestamp")
            and not metadata.get("finalizers")
            and not metadata.get("deletionGracePeriodSeconds")
        )
        return self._store(resource, (namespace, name), "DELETED" if released else "MODIFIED", updated, current)

    def _store(
        self, resource: Resource, key: Key, kind: str, obj: JsonObject, previous: JsonObject | None
    ) -> JsonObject:
        self._resource_version += 1
        obj["metadata"]["resourceVersion"] = str(self._resource_version)
        if kind == "DELETED":
            del self._objects[resource][key]
        else:
            self._objects[resource][key] = obj
        labelled = self._labelled[resource]  # the label index follows: out with the old labels, in with the new
        if previous is not None:
            for pair in previous["metadata"].get("labels", {}).items():
                labelled[pair].discard(key)
                if not labelled[pair]:
                    del labelled[pair]
        if kind != "DELETED":
            for pair in obj["metadata"].get("labels", {}).items():
                labelled.setdefault(pair, set()).add(key)
        change = Change(self._resource_version, kind, obj, previous)
        history = self._history[resource]
        if len(history) == history.maxlen:
            self._forgotten[resource] = history[0].resource_version
        history.append(change)
        for watch in self._watches[resource]:
            watch.offer(change)
        return obj


def _admit(resource: Resource, obj: JsonObject, old: JsonObject | None) -> JsonObject:
    """A custom resource as its schema has the server store it (see ``StructuralSchema.admit``), 422 when invalid;
    a Secret with its ``stringData`` merged into ``data``."""
    if resource == SECRETS:
        return _merge_string_data(obj)
    if resource.schema is None:
        return obj
    admitted, errors = resource.schema.admit(obj, old)
    if errors:
        raise invalid(resource.kind, resource.group, obj["metadata"]["name"], errors)
    return admitted


def _merge_string_data(secret: JsonObject) -> JsonObject:
    """``stringData`` is write-only: its values, base64-encoded, replace those of ``data`` under the same keys."""
    string_data = secret.pop("stringData", None) or {}
    if string_data:
        encoded = {key: base64.b64encode(str(value).encode()).decode() for key, value in string_data.items()}
        secret["data"] = {**(secret.get("data") or {}), **encoded}
    return secret


def _check_preconditions(resource: Resource, current: JsonObject, options: DeleteOptions) -> None:
    metadata, qualified = current["metadata"], f"{resource.kind}{'.' + resource.group if resource.group else ''}"
    if options.uid is not None and options.uid != metadata["uid"]:
        raise conflict(
            qualified,
            metadata["name"],
            f"the UID in the precondition ({options.uid}) does not match the "
            f"UID in record ({metadata['uid']}). The object might have been "
            "deleted and then recreated",
        )
    if options.resource_version is not None and options.resource_version != metadata["resourceVersion"]:
        raise conflict(
            qualified,
            metadata["name"],
            f"the ResourceVersion in the precondition "
            f"({options.resource_version}) does not match the ResourceVersion "
            f"in record ({metadata['resourceVersion']}). The object might have "
            "been modified",
        )


def _grace_period(pod: JsonObject, options: DeleteOptions) -> int:
    """How long a pod's deletion waits for its kubelet, as the pod strategy decides."""
    spec = pod.get("spec") or {}
    if not spec.get("nodeName") or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return 0  # no kubelet runs it (not scheduled, or done): nothing to wait for
    if options.grace_period_seconds is not None:
        return options.grace_period_seconds
    return int(spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_PERIOD_S))


def _frozen_pod_spec(pod: JsonObject) -> JsonObject:
    """The part of a pod's spec that no update may change."""
    spec = {key: value for key, value in (pod.get("spec") or {}).items() if key not in POD_MUTABLE_SPEC}
    for containers in ("containers", "initContainers"):
        if containers in spec:
            spec[containers] = [{k: v for k, v in c.items() if k != "image"} for c in spec[containers]]
    return spec


def _omit_empty(metadata: JsonObject) -> None:
    for field in OMITTED_WHEN_EMPTY:
        if field in metadata and not metadata[field]:
            del metadata[field]


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


_WRITE_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
_PATCH_TYPES = {
    "application/merge-patch+json": False,
    "application/strategic-merge-patch+json": False,
    "application/json-patch+json": True,
}


def _parse_path(path: str) -> tuple[str, str, str, str | None, str | None, str | None] | None:
    """(group, version, plural, namespace, name, subresource) of a resource path; None for any other path."""
    parts = [part for part in path.split("/") if part]
    if parts[:1] == ["api"] and len(parts) > 2:
        group, version, rest = "", parts[1], parts[2:]
    elif parts[:1] == ["apis"] and len(parts) > 3:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = None
    # `namespaces/x/status` is a Namespace's subresource; `namespaces/x/pods` is the pods in namespace x.
    if rest[0] == "namespaces" and len(rest) > 2 and rest[2] not in ("status", "finalize"):
        namespace, rest = rest[1], rest[2:]
    if len(rest) > 3:
        raise StatusError(404, "NotFound", NO_SUCH_RESOURCE)
    plural, name, subresource = (rest + [None, None])[:3]
    return group, version, plural, namespace, name, subresource


class ApiServer:
    """The store served as the Kubernetes REST API (see the module docstring), every resource request recorded."""

    def __init__(self, crds: Iterable[Mapping[str, Any]] = (), namespaces: Iterable[str] = ("default",)) -> None:
        crds = list(crds)
        self.store = Store([*BUILTIN_RESOURCES, *(r for crd in crds for r in crd_resources(crd))])
        self.calls: list[ApiCall] = []
        self.lost_nodes: set[str] = set()
        """Nodes whose kubelet the server never hears from again (see the module docstring)."""
        self.faults = FaultTable()
        self._streams: set[_Stream] = set()
        self._loop: asyncio.AbstractEventLoop | None = None  # the serving loop, known once a watch opened
        self.faults.on_add(self._faults_added)
        for name in namespaces:
            self.store.create(NAMESPACES, None, {"metadata": {"name": name}})
            self.store.patch(NAMESPACES, None, name, {"status": {"phase": "Active"}}, subresource="status")
        for crd in crds:
            self.store.create(CRDS, None, dict(crd))

    def application(self) -> web.Application:
        # One catch-all route, parsed here: the API's paths are not a good fit for aiohttp's router, and parsing
        # costs the same for every request.
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._handle)
        return app

    async def collect_garbage(self, period_s: float) -> None:
        while True:
            await asyncio.sleep(period_s)
            self.store.collect_garbage()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            target = _parse_path(request.path)
            if target is None:
                return web.json_response(self._discovery([part for part in request.path.split("/") if part]))
            return await self._serve(request, *target)
        except StatusError as error:
            return web.json_response(error.status(), status=error.code, headers=error.headers)

    async def _serve(
        self,
        request: web.Request,
        group: str,
        version: str,
        plural: str,
        namespace: str | None,
        name: str | None,
        subresource: str | None,
    ) -> web.StreamResponse:
        method, query = request.method, request.query
        watching = query.get("watch") in ("true", "1")
        if method == "GET":
            verb = "watch" if watching else "get" if name else "list"
        else:
            verb = (
                "deletecollection" if method == "DELETE" and name is None else _WRITE_VERBS.get(method, method.lower())
            )
        user_agent = request.headers.get("User-Agent", "")
        call = ApiCall(
            method=method,
            verb=verb,
            group=group,
            resource=plural,
            subresource=subresource,
            namespace=namespace,
            name=name,
            user_agent=user_agent,
        )
        self.calls.append(call)
        store = self.store
        resource = store.resource(group, version, plural)
        binding = resource == PODS and subresource == "binding"
        if subresource is not None and not binding and (subresource != "status" or not resource.status):
            raise StatusError(404, "NotFound", NO_SUCH_RESOURCE)
        if not _allowed(method, resource, name, subresource):
            raise StatusError(405, "MethodNotAllowed", f"{method} is not supported on this path by this server")
        body: Any = None
        if method != "GET":
            if method == "PATCH" and request.content_type not in _PATCH_TYPES:
                raise StatusError(
                    415,
                    "UnsupportedMediaType",
                    f"the body of the request was in an unknown format - "
                    f"accepted media types include: {', '.join(_PATCH_TYPES)}",
                )
            body = await _json_body(request, {} if method == "DELETE" else None)
        fault = await self._inject(call, body, user_agent in TEST_USER_AGENTS)
        if verb == "watch":
            return await self._watch(request, resource, namespace, name, call, fault)
        if verb == "get":
            assert name is not None  # the verb says so
            return web.json_response(store.get(resource, namespace, name))
        if verb == "list":
            items = store.list(resource, namespace, query.get("labelSelector", ""), query.get("fieldSelector", ""))
            return web.json_response(
                {
                    "apiVersion": resource.api_version,
                    "kind": f"{resource.kind}List",
                    "metadata": {"resourceVersion": store.resource_version},
                    "items": items,
                }
            )
        if user_agent == KUBELET_USER_AGENT and resource == PODS:
            self._refuse_lost_node(namespace, name, body if binding else None)
        if method == "POST" and name is None:
            return web.json_response(store.create(resource, namespace, _object(body)), status=201)
        assert name is not None  # only POST addresses a collection
        if binding:
            store.bind(str(namespace), name, _binding_target(body))
            return web.json_response(
                {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Success", "code": 201}, status=201
            )
        if method == "DELETE":
            return web.json_response(store.delete(resource, namespace, name, DeleteOptions.parse(body, query)))
        if method == "PUT":
            return web.json_response(store.replace(resource, namespace, name, _object(body), subresource))
        patched = store.patch(resource, namespace, name, body, _PATCH_TYPES[request.content_type], subresource)
        return web.json_response(patched)

    async def _inject(self, call: ApiCall, body: Any, tooling: bool) -> Fault | None:
        """Apply the fault rule this request matches, if any: wait its delay, raise its error; the fault."""
        if call.method == "POST" and call.name is None and isinstance(body, dict):
            metadata = body.get("metadata") or {}  # a create is matched and named by the name in its body
            call = dataclasses.replace(call, name=metadata.get("name") or metadata.get("generateName"))
        fault = self.faults.take(call, tooling)
        if fault is None:
            return None
        await asyncio.sleep(fault.delay_s)
        if fault.code is not None:
            raise _fault_error(fault, call)
        return fault

    def _faults_added(self) -> None:
        if self._loop is not None:  # called in the test's thread: the streams live in the server's loop
            self._loop.call_soon_threadsafe(self._cut_open_streams)

    def _cut_open_streams(self) -> None:
        """Let a new ``drop_watch`` rule cut the open watch streams it matches."""
        for stream in self._streams:
            if stream.left is None and (fault := self.faults.take(stream.call, stream.tooling, True)) is not None:
                stream.cut_after(fault.drop_watch)

    def _refuse_lost_node(self, namespace: str | None, name: str | None, binding: Any) -> None:
        """Nothing a kubelet says about a pod on a lost node (or binds to one) reaches the server."""
        if name is None:
            return
        node = (
            _binding_target(binding)
            if binding is not None
            else ((self.store.get(PODS, namespace, name).get("spec") or {}).get("nodeName"))
        )
        if node in self.lost_nodes:
            raise StatusError(
                503, "ServiceUnavailable", f'node "{node}" is lost: nothing its kubelet sends reaches the API server'
            )

    async def _watch(
        self,
        request: web.Request,
        resource: Resource,
        namespace: str | None,
        name: str | None,
        call: ApiCall,
        fault: Fault | None,
    ) -> web.StreamResponse:
        query = request.query
        fields = ",".join(filter(None, [query.get("fieldSelector", ""), name and f"metadata.name={name}"]))
        timeout = query.get("timeoutSeconds")
        self._loop = asyncio.get_running_loop()
        deadline = self._loop.time() + float(timeout) if timeout else None
        with self.store.watch(
            resource, namespace, query.get("resourceVersion"), query.get("labelSelector", ""), fields
        ) as watch:
            stream = _Stream(call, call.user_agent in TEST_USER_AGENTS, watch)
            if fault is not None:
                stream.cut_after(fault.drop_watch)
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            await response.prepare(request)
            self._streams.add(stream)
            try:
                with contextlib.suppress(ConnectionResetError):  # the client went away between two events
                    while (event := await watch.next(deadline)) is not None and stream.left != 0:
                        await response.write(json.dumps(event).encode() + b"\n")
                        stream.sent()
                    await response.write_eof()
            finally:
                self._streams.discard(stream)
        return response

    def _discovery(self, parts: list[str]) -> JsonObject:
        resources = self.store.resources
        groups: dict[str, list[str]] = {}
        for resource in resources:
            if resource.group and resource.version not in groups.setdefault(resource.group, []):
                groups[resource.group].append(resource.version)
        if parts == ["version"]:
            return VERSION
        if parts == ["api"]:
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        if parts == ["apis"]:
            return {
                "apiVersion": "v1",
                "kind": "APIGroupList",
                "groups": [_api_group(group, versions) for group, versions in groups.items()],
            }
        if len(parts) == 2 and parts[0] == "apis" and parts[1] in groups:
            return _api_group(parts[1], groups[parts[1]])
        served = [r for r in resources if ["api", r.version] == parts or ["apis", r.group, r.version] == parts]
        if not served:
            raise StatusError(404, "NotFound", NO_SUCH_RESOURCE)
        return {
            "apiVersion": "v1",
            "kind": "APIResourceList",
            "groupVersion": served[0].api_version,
            "resources": [entry for resource in served for entry in _discovered(resource)],
        }


def _api_group(group: str, versions: list[str]) -> JsonObject:
    listed = [{"groupVersion": f"{group}/{version}", "version": version} for version in versions]
    return {"apiVersion": "v1", "kind": "APIGroup", "name": group, "versions": listed, "preferredVersion": listed[0]}


def _discovered(resource: Resource) -> list[JsonObject]:
    verbs = (
        ["get", "list", "watch"]
        if resource.read_only
        else ["create", "delete", "get", "list", "patch", "update", "watch"]
    )
    entries = [
        {
            "name": resource.plural,
            "singularName": resource.kind.lower(),
            "namespaced": resource.namespaced,
            "kind": resource.kind,
            "verbs": verbs,
            "shortNames": list(resource.short_names),
            "categories": list(resource.categories),
        }
    ]
    if resource.status:
        entries.append(
            {
                "name": f"{resource.plural}/status",
                "singularName": "",
                "namespaced": resource.namespaced,
                "kind": resource.kind,
                "verbs": ["get"] if resource.read_only else ["get", "patch", "update"],
            }
        )
    if resource == PODS:
        entries.append(
            {"name": "pods/binding", "singularName": "", "namespaced": True, "kind": "Binding", "verbs": ["create"]}
        )
    return entries


@dataclasses.dataclass(eq=False)
class _Stream:
    """An open watch stream as faults see it: its request, its events, and how many more it may send."""

    call: ApiCall
    tooling: bool
    watch: Watch
    left: int | None = None
    """Events left before a ``drop_watch`` fault cuts the stream; None: no such fault."""

    def cut_after(self, events: int | None) -> None:
        self.left = events
        if events == 0:
            self.watch.end()  # wakes the stream if it waits for an event

    def sent(self) -> None:
        if self.left is not None:
            self.left -= 1


FAULT_WORDS = {
    403: (
        "Forbidden",
        '{what} "{name}" is forbidden: exceeded quota: gpu-quota, requested: nvidia.com/gpu=1, used: '
        "nvidia.com/gpu=8, limited: nvidia.com/gpu=8",
    ),
    409: ("Conflict", 'Operation cannot be fulfilled on {what} "{name}": ' + STALE),
    422: (
        "Invalid",
        'admission webhook "deny.tests.bigmodel.dev" denied the request: a scripted fault denies this request',
    ),
    429: ("TooManyRequests", "Too many requests, please try again later."),
    500: ("InternalError", "Internal error occurred: etcdserver: request timed out"),
    503: ("ServiceUnavailable", "the server is currently unable to handle the request"),
    504: (
        "Timeout",
        "the server was unable to return a response in the time allotted, but may still be processing the request",
    ),
}
"""A real server's reason and message for each error a fault may answer (403: a ResourceQuota's refusal, 422: an
admission webhook's denial)."""


def _fault_error(fault: Fault, call: ApiCall) -> StatusError:
    code = fault.code
    assert code is not None  # only an error fault raises
    reason, message = FAULT_WORDS.get(code, (http.HTTPStatus(code).phrase.replace(" ", ""), "a scripted fault"))
    what = f"{call.resource}.{call.group}" if call.group else call.resource
    details: JsonObject = {"name": call.name or "", "kind": call.resource}
    if call.group:
        details["group"] = call.group
    headers = {}
    if code == 429:
        details["retryAfterSeconds"] = fault.retry_after_s
        headers["Retry-After"] = str(fault.retry_after_s)
    return StatusError(
        code,
        fault.reason or reason,
        fault.message or message.format(what=what, name=call.name or ""),
        details=details,
        headers=headers,
    )


def _allowed(method: str, resource: Resource, name: str | None, subresource: str | None) -> bool:
    """Refused: writes to the read-only resources, deletecollection, POST to an object (but for its binding), PUT or
    PATCH of a collection or of a binding, DELETE of a subresource, and methods the API does not have."""
    if method == "GET":
        return subresource != "binding"
    if resource.read_only or method not in _WRITE_VERBS:
        return False
    if subresource == "binding":
        return method == "POST"
    return (method == "POST") == (name is None) and not (method == "DELETE" and subresource is not None)


def _object(body: Any) -> JsonObject:
    if not isinstance(body, dict):
        raise StatusError(400, "BadRequest", "the request body is not an object")
    return body


def _binding_target(body: Any) -> str:
    """The node a ``Binding`` body names."""
    target = _object(body).get("target")
    if not isinstance(target, dict) or not target.get("name"):
        raise invalid(
            "Binding",
            "",
            str((body.get("metadata") or {}).get("name", "")),
            [FieldError("FieldValueRequired", "target.name")],
        )
    return str(target["name"])


async def _json_body(request: web.Request, empty: Any = None) -> Any:
    """The request's JSON body; `empty` when it has none and that is allowed (a DELETE without DeleteOptions)."""
    if empty is not None and not await request.read():
        return empty
    try:
        return await request.json()
    except ValueError as exc:
        raise StatusError(400, "BadRequest", f"the request body is not JSON: {exc}") from exc
