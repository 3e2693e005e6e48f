"""A test-only kubelet: runs the pods of an emulated API server as local processes on this host.

:class:`LocalKubelet` watches the Pods of one namespace and, for each new pod, runs its first container's
``command`` + ``args`` (the image is ignored: the host's Python environment plays the image) in a new process group,
with the host's environment plus the container's ``env``. It reports back what a kubelet reports through the
``status`` subresource: ``Pending`` then ``Running`` with ``podIP``/``hostIP`` 127.0.0.1, the container status and the
``Ready`` condition, then ``Succeeded`` (exit code 0) or ``Failed`` with ``state.terminated.exitCode`` (128 + the
signal number when a signal ended it, as container runtimes report). When the main process ends by itself, what is
left of its group is killed, as a container runtime tears a container down.

It plays the scheduler too: it binds each pod it runs to its node, :data:`NODE_NAME` (``localhost``), through the
``pods/<name>/binding`` subresource, and runs only pods it bound or that were bound to that node already (a pod bound
to another node is not its business; one it cannot bind, because its node is lost, stays Pending). A bound pod's
deletion leaves it Terminating (see :mod:`tests.support.apiserver`): on seeing ``deletionTimestamp`` the kubelet sends
SIGTERM to the main process (as a container runtime signals PID 1: `ray start` drains its node first), SIGKILL to all
that is left once the main process has exited or after the pod's ``deletionGracePeriodSeconds`` (at most
``termination_grace_s``, so that tests stay quick), reports how the container ended, and once every process of the pod
has exited finishes the deletion with a DELETE of grace period 0 and the pod's uid as precondition; a Terminating pod
of its node that it never ran is finished at once. :meth:`LocalKubelet.cordon` leaves new pods Pending, Unschedulable,
as a cordoned node does, until :meth:`LocalKubelet.uncordon`. A pod deleted outright (a force delete) is stopped the same way. On a lost node
(``Emulator.lose_node``) the server hears none of that: the processes stop, the pod stays Terminating.

How the environment is resolved, as Kubernetes does:

* ``$(VAR)`` in ``command``, ``args`` and env values expands to an env var of the container defined earlier
  (``$$(VAR)`` is a literal ``$(VAR)``; an unknown ``$(VAR)`` stays as written);
* downward API ``fieldRef``: ``metadata.name``/``namespace``/``uid``, ``metadata.labels['k']``,
  ``metadata.annotations['k']``, ``spec.nodeName`` (``localhost``), ``spec.serviceAccountName``, ``status.podIP``
  and ``status.hostIP`` (127.0.0.1);
* ``valueFrom.secretKeyRef`` and ``valueFrom.configMapKeyRef``, and ``envFrom`` (``secretRef``, ``configMapRef``,
  ``prefix``; a key that is no variable name is skipped): the Secret or ConfigMap is read from the API server when the
  container starts (a Secret's ``data`` base64-decoded; a ConfigMap's ``data`` and ``binaryData``). ``envFrom`` comes
  first and ``env`` entries override it, in order. A missing object or key that is not ``optional`` keeps the pod
  Pending with the container waiting, reason ``CreateContainerConfigError`` and a real kubelet's message
  (``secret "db" not found``), and it is looked for again every :data:`CONFIG_RETRY_S` until it appears or the pod is
  deleted; an optional one leaves the variables unset. Any other ``valueFrom`` (``resourceFieldRef``) fails the pod
  with reason ``LocalKubeletUnsupported``.

Where it deliberately differs from a real kubelet, because every pod shares this host's network namespace:

* there is no cluster DNS: a host name ending in ``.svc`` or ``.svc.cluster.local`` in an env value or an argument
  becomes 127.0.0.1. When it is followed by ``:<port>`` and names a Service whose selector matches a pod this kubelet
  runs, the port becomes the host port of that pod's target port (see the next point);
* ports: a container port or probe port number that another pod of this kubelet uses, or that is busy on this host,
  is replaced by a free port: every occurrence of the number in the args and env values is rewritten (for example
  ``--dashboard-agent-listen-port=52365``, or ``RAY_SERVE_WORKER_PROXY_HTTP_PORT=8000``, which is how co-located
  worker pods' Serve proxies each get a port of their own) and the probe uses the new port.
  :meth:`LocalKubelet.host_port` tells which port a pod really got. Two pods can therefore both "listen on 8265";
  the one made first keeps the number (as a Ray head made before its workers keeps the Serve port). A
  pod made again under the name of one this kubelet ran gets the host ports that one had, where they are free: a
  Service resolved once (at a container's start, see the previous point) keeps reaching it, as a Service's ClusterIP
  stays the same for a re-created pod on a real cluster (a Ray head re-created in place, whose workers stay).

* volumes: an ``emptyDir`` volume is a directory of its own for each pod, as a real one is. Its ``mountPath`` in the
  args and env values is rewritten to that directory (Ray's ``--temp-dir=/tmp/ray``, so two Ray nodes never share a
  session directory and race for its socket names); a process that uses the path without naming it shares the host's.
  The directories live under one short temporary directory (Unix socket paths are limited to 107 bytes), moved into
  ``log_dir`` when the kubelet stops, so a failed test keeps each Ray node's session logs. Other volumes are not
  mounted.

Other simplifications: restartPolicy is always treated as ``Never`` (the pod fails; nothing restarts it), only the
first container runs (no init containers or sidecars), resources are not enforced, a refused binding or status report
is not retried (and a lost node stays lost), and
readiness probes (``httpGet``: any status 200-399, or ``tcpSocket``) run every ``probe_period_s`` regardless of the
probe's own timings. Each process's stdout and stderr go to ``<log_dir>/<pod>.log``; when a process fails, the tail
of its log is printed to stderr (pytest shows it with the failing test).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import psutil

from tests.support.emulator import KUBELET_USER_AGENT, JsonObject, api_path, labels_match

LOCAL_IP = "127.0.0.1"
NODE_NAME = "localhost"
"""The node this kubelet binds the pods it runs to (what ``spec.nodeName`` says inside them)."""
START_TIMEOUT_S = 10.0
LOG_TAIL_LINES = 40

_VAR_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_SERVICE_HOST = re.compile(rf"\b(?P<host>{_LABEL}(?:\.{_LABEL})*\.svc(?:\.cluster\.local)?)\b(?::(?P<port>\d+))?")
_FIELD_KEY = re.compile(r"^metadata\.(labels|annotations)\['([^']+)'\]$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_KINDS = {"secrets": "Secret", "configmaps": "ConfigMap"}
CONFIG_RETRY_S = 0.5
"""How often a pod waiting for a missing Secret or ConfigMap looks again."""


class ConfigMissing(Exception):
    """A Secret, ConfigMap or key that the pod's environment needs is not there (yet); the kubelet retries."""


class PodFailure(Exception):
    """A pod this kubelet cannot run as asked; the pod fails with this reason and message."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class _Pod:
    """What the kubelet knows about one incarnation (uid) of a pod it runs."""

    name: str
    uid: str
    labels: dict[str, str]
    container: JsonObject
    ports: dict[int, int] = field(default_factory=dict)
    claimed: frozenset[int] = frozenset()
    """The declared container ports it was the first live pod to declare, when it was created: until it starts,
    they are kept for it, so that of pods declaring the same port the first made gets it (a Ray head, made before
    its workers, keeps the Serve port its Serve config binds)."""
    process: asyncio.subprocess.Process | None = None
    started_at: str = ""
    ready: bool = False
    deleted: bool = False
    gone: bool = False
    stopping: bool = False
    """Being terminated: its processes may still hold its ports, even once the API object is gone."""
    grace_s: float | None = None
    """The grace period its deletion gives (``deletionGracePeriodSeconds``), when it is Terminating."""
    task: asyncio.Task[None] | None = None
    stopper: asyncio.Task[None] | None = None
    """Its termination, once it is deleted: the deletion is finished only when every process of it has exited."""


def _now() -> str:
    return datetime.datetime.now(tz=datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined variables expand, ``$$`` is a literal ``$``, the rest stays."""
    return _VAR_REFERENCE.sub(lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]), text)


def _decoded(value: str) -> str:
    return base64.b64decode(value).decode(errors="replace")


def _port_busy(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOCAL_IP, 0))
        return int(probe.getsockname()[1])


def _rewrite_ports(text: str, ports: Mapping[int, int]) -> str:
    for declared, host in ports.items():
        if declared != host:
            text = re.sub(rf"(?<!\d){declared}(?!\d)", str(host), text)
    return text


def _rewrite_paths(text: str, paths: Mapping[str, Path]) -> str:
    for mount, host in paths.items():
        text = re.sub(rf"(?<![\w./-]){re.escape(mount.rstrip('/'))}(?=/|$|[^\w.-])", lambda _: str(host), text)
    return text


def _named_port(container: Mapping[str, Any], port: int | str) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for declared in container.get("ports") or []:
        if declared.get("name") == port:
            return int(declared["containerPort"])
    raise PodFailure("LocalKubeletUnsupported", f"no container port named {port!r}")


class LocalKubelet:
    """Runs the pods of one namespace of an emulated API server as local processes (see the module docstring)."""

    def __init__(self, api_url: str, log_dir: Path, namespace: str = "default", *, probe_period_s: float = 0.2,
                 termination_grace_s: float = 5.0) -> None:
        self._api_url = api_url
        self._log_dir = log_dir
        self._namespace = namespace
        self._probe_period_s = probe_period_s
        self._termination_grace_s = termination_grace_s
        self._pods: dict[str, _Pod] = {}
        self._cordoned = False
        self._thread = threading.Thread(target=self._run, name="local-kubelet", daemon=True)
        self._watching = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._session: aiohttp.ClientSession | None = None
        self._failure: BaseException | None = None
        self._volume_root: Path | None = None
        self._incarnations = 0
        self._host_ports: dict[str, dict[int, int]] = {}
        """The host ports each pod name last got, for a pod made again under it."""

    def __enter__(self) -> LocalKubelet:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        """Start watching pods; returns once the watch is established."""
        self._log_dir.mkdir(parents=True, exist_ok=True)
        self._volume_root = Path(tempfile.mkdtemp(prefix="kubelet-"))
        self._thread.start()
        if not self._watching.wait(START_TIMEOUT_S):
            raise TimeoutError(f"the local kubelet did not start watching pods within {START_TIMEOUT_S} s")
        if self._failure is not None:
            raise RuntimeError("the local kubelet failed to start") from self._failure

    def stop(self, timeout: float = 20.0) -> None:
        """Kill every pod's processes (SIGTERM, then SIGKILL at once) and stop watching."""
        if self._loop is not None and self._stopping is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the local kubelet did not stop within {timeout} s")
        if self._volume_root is not None:
            shutil.move(self._volume_root, self._log_dir / self._volume_root.name)

    def cordon(self) -> None:
        """Place no new pod (as `kubectl cordon` of the only node): they stay Pending, Unschedulable, until uncordon;
        what runs goes on running."""
        self._cordoned = True

    def uncordon(self) -> None:
        self._cordoned = False

    def pid_of(self, pod_name: str) -> int | None:
        """The pid of the pod's main process while it runs."""
        pod = self._pods.get(pod_name)
        process = pod.process if pod is not None else None
        return process.pid if process is not None and process.returncode is None else None

    def kill(self, pod_name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Send a signal to the pod's main process, as a crash or an OOM kill would."""
        pid = self.pid_of(pod_name)
        if pid is None:
            raise LookupError(f"pod {pod_name!r} has no running process")
        os.kill(pid, sig)

    def host_port(self, pod_name: str, container_port: int) -> int:
        """The port of this host where the pod's `container_port` really listens (see the module docstring)."""
        pod = self._pods.get(pod_name)
        return pod.ports.get(container_port, container_port) if pod is not None else container_port

    def log_path(self, pod_name: str) -> Path:
        return self._log_dir / f"{pod_name}.log"

    def log_tail(self, pod_name: str, lines: int = LOG_TAIL_LINES) -> str:
        path = self.log_path(pod_name)
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to the starting thread, which raises it
            self._failure = exc
            self._watching.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        async with aiohttp.ClientSession(self._api_url, headers={"User-Agent": KUBELET_USER_AGENT}) as session:
            self._session = session
            watcher = asyncio.create_task(self._watch())
            await self._stopping.wait()
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            pods = list(self._pods.values())
            for pod in pods:
                # The test is over: nothing is left to drain for, and Ray's drain on SIGTERM would hold every
                # teardown for the whole grace period.
                pod.gone = pod.deleted = True
                pod.grace_s = 0.0
            await asyncio.gather(*(self._terminate(pod) for pod in pods))
            await asyncio.gather(*(pod.task for pod in pods if pod.task is not None), return_exceptions=True)

    async def _watch(self) -> None:
        assert self._session is not None
        path = api_path("v1", "pods", self._namespace)
        no_timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        while True:
            try:
                async with self._session.get(path, params={"watch": "true"}, timeout=no_timeout) as response:
                    response.raise_for_status()
                    self._watching.set()
                    async for line in response.content:
                        if line.strip():
                            event = json.loads(line)
                            self._on_event(event["type"], event["object"])
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                print(f"local kubelet: pod watch broke ({exc!r}); reconnecting", file=sys.stderr)
                await asyncio.sleep(0.5)

    def _on_event(self, kind: str, body: JsonObject) -> None:
        metadata, spec = body.get("metadata", {}), body.get("spec") or {}
        name, uid = metadata["name"], metadata.get("uid", metadata["name"])
        node = spec.get("nodeName")
        if node not in (None, NODE_NAME):
            return  # another node's pod
        known = self._pods.get(name)
        if kind == "DELETED" or metadata.get("deletionTimestamp"):
            if known is not None and known.uid == uid:
                self._on_deletion(known, kind == "DELETED", metadata.get("deletionGracePeriodSeconds"))
            elif kind != "DELETED" and node == NODE_NAME:
                # Terminating on this node but never run here (it was bound before this kubelet started): nothing
                # to stop, so finish at once.
                gone = _Pod(name=name, uid=uid, labels={}, container={}, deleted=True)
                asyncio.get_running_loop().create_task(self._finish_deletion(gone))
            return
        if known is not None and known.uid == uid:
            return
        if body.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            return  # a replayed pod that already ran
        pod = _Pod(name=name, uid=uid, labels=dict(metadata.get("labels") or {}), container=spec["containers"][0])
        previous = known
        self._pods[name] = pod
        pod.claimed = frozenset(self._declared_ports(pod.container) - self._ports_in_use(pod))
        pod.task = asyncio.get_running_loop().create_task(self._run_pod(pod, body, previous, bound=node is not None))

    def _on_deletion(self, pod: _Pod, gone: bool, grace_s: float | None) -> None:
        """Stop a deleted or Terminating pod's processes; the pod's task then finishes a Terminating pod's deletion."""
        pod.gone = gone
        if pod.deleted:
            return
        pod.deleted = True
        if grace_s is not None:
            pod.grace_s = min(float(grace_s), self._termination_grace_s)
        loop = asyncio.get_running_loop()
        if pod.task is None or pod.task.done():
            loop.create_task(self._finish_deletion(pod))  # it ran to its end before: nothing left to stop
        else:
            pod.stopper = loop.create_task(self._terminate(pod))

    async def _run_pod(self, pod: _Pod, body: JsonObject, previous: _Pod | None, bound: bool) -> None:
        """Run the pod to its end, then finish its deletion if it was deleted meanwhile."""
        await self._run_until_exit(pod, body, previous, bound)
        if pod.deleted:
            if pod.stopper is not None:
                # As a kubelet removes a pod only once its containers are gone: nothing of it holds a port then.
                await pod.stopper
            await self._finish_deletion(pod)

    async def _run_until_exit(self, pod: _Pod, body: JsonObject, previous: _Pod | None, bound: bool) -> None:
        if previous is not None:
            previous.gone = previous.deleted = True
            await self._terminate(previous)
        try:
            if not bound and not await self._schedulable(pod):
                return
            if not bound and not await self._bind(pod):
                return
            await self._patch_status(pod, self._status(pod, "Pending", {"waiting": {"reason": "ContainerCreating"}}))
            container_env = await self._environment_when_ready(pod, body)
            if container_env is None:
                return  # deleted while it waited for its Secrets and ConfigMaps: nothing ran, nothing to stop
            argv, env = await self._prepare(pod, body, container_env)
            if pod.deleted:
                return  # deleted while it was being prepared: nothing ran, nothing to stop
            with self.log_path(pod.name).open("ab") as log:
                log.write(f"--- pod {pod.name} uid {pod.uid} at {_now()}: {argv!r}\n".encode())
                log.flush()
                pod.process = await asyncio.create_subprocess_exec(
                    *argv, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT,
                    env=env, cwd=pod.container.get("workingDir"), start_new_session=True)
            if pod.deleted:  # deleted while its process started: the deletion found no process to stop
                asyncio.get_running_loop().create_task(self._terminate(pod))
            pod.started_at = _now()
            probe = pod.container.get("readinessProbe")
            pod.ready = probe is None
            await self._patch_status(pod, self._status(pod, "Running", {"running": {"startedAt": pod.started_at}}))
            prober = asyncio.create_task(self._probe(pod, probe)) if probe is not None else None
            code = await pod.process.wait()
            if prober is not None:
                prober.cancel()
            self._kill_group(pod, signal.SIGKILL)
            await self._report_exit(pod, code)
        except PodFailure as failure:
            await self._patch_status(pod, self._status(pod, "Failed", {"waiting": {"reason": failure.reason,
                                                                                    "message": str(failure)}}))
        except FileNotFoundError as missing:
            await self._patch_status(pod, self._status(pod, "Failed", {"waiting": {"reason": "StartError",
                                                                                    "message": str(missing)}}))
        except aiohttp.ClientError as exc:
            # Nobody awaits this task, so an API failure would otherwise vanish without a trace.
            print(f"local kubelet: reporting the status of pod {pod.name} failed: {exc!r}", file=sys.stderr)

    async def _schedulable(self, pod: _Pod) -> bool:
        """Wait while the node is cordoned, the pod Pending as a scheduler leaves it; False if it is deleted."""
        if self._cordoned:
            unschedulable = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                             "message": "0/1 nodes are available: 1 node(s) were unschedulable.",
                             "lastTransitionTime": _now()}
            await self._patch_status(pod, {"phase": "Pending", "conditions": [unschedulable]})
        while self._cordoned and not pod.deleted:
            await asyncio.sleep(self._probe_period_s)
        return not pod.deleted

    async def _bind(self, pod: _Pod) -> bool:
        """Bind the pod to this node, as the scheduler would; False when the server refuses (bound elsewhere, being
        deleted, or this node is lost)."""
        assert self._session is not None
        binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": pod.name},
                   "target": {"apiVersion": "v1", "kind": "Node", "name": NODE_NAME}}
        async with self._session.post(api_path("v1", "pods", self._namespace, pod.name, "binding"),
                                      json=binding) as response:
            if response.status not in (201, 404, 409, 503):
                response.raise_for_status()
            return response.status == 201

    async def _finish_deletion(self, pod: _Pod) -> None:
        """What a kubelet does once a Terminating pod's containers stopped: delete it with grace period 0, for this
        incarnation only (its uid). Refused for a lost node, whose pods stay Terminating."""
        if pod.gone:
            return  # deleted outright (or a newer pod of the same name took over): nothing to finish
        assert self._session is not None
        options = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                   "preconditions": {"uid": pod.uid}}
        try:
            async with self._session.delete(api_path("v1", "pods", self._namespace, pod.name),
                                            json=options) as response:
                # 404: gone already; 409: a newer pod of the same name; 503: this node is lost.
                if response.status not in (200, 404, 409, 503):
                    response.raise_for_status()
        except aiohttp.ClientError as exc:  # nobody awaits this either
            print(f"local kubelet: finishing the deletion of pod {pod.name} failed: {exc!r}", file=sys.stderr)

    async def _report_exit(self, pod: _Pod, code: int) -> None:
        exit_code = code if code >= 0 else 128 - code
        terminated: JsonObject = {"exitCode": exit_code, "reason": "Completed" if code == 0 else "Error",
                                  "startedAt": pod.started_at, "finishedAt": _now()}
        if code < 0:
            terminated["signal"] = -code
        pod.ready = False
        if code != 0 and not pod.deleted:
            print(f"local kubelet: pod {pod.name} exited with code {exit_code}; the tail of "
                  f"{self.log_path(pod.name)}:\n{self.log_tail(pod.name)}", file=sys.stderr)
        await self._patch_status(pod, self._status(pod, "Succeeded" if code == 0 else "Failed",
                                                   {"terminated": terminated}))

    async def _environment_when_ready(self, pod: _Pod, body: JsonObject) -> dict[str, str] | None:
        """The container's environment once every Secret and ConfigMap it needs is there; None when the pod was
        deleted meanwhile. Until then the pod waits with reason CreateContainerConfigError, as on a real node."""
        reported = ""
        while not pod.deleted:
            try:
                return await self._environment(pod.container, body)
            except ConfigMissing as missing:
                if str(missing) != reported:
                    reported = str(missing)
                    waiting = {"reason": "CreateContainerConfigError", "message": reported}
                    await self._patch_status(pod, self._status(pod, "Pending", {"waiting": waiting}))
                await asyncio.sleep(CONFIG_RETRY_S)
        return None

    async def _environment(self, container: JsonObject, body: JsonObject) -> dict[str, str]:
        """``envFrom`` first, then ``env`` in order, each entry overriding what came before, as Kubernetes does."""
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            env |= await self._keys_of(source)
        for var in container.get("env") or []:
            if "valueFrom" not in var:
                env[var["name"]] = expand(var.get("value", ""), env)
            elif "fieldRef" in var["valueFrom"]:
                env[var["name"]] = self._field_value(body, var)
            else:
                value = await self._key_value(var)
                if value is not None:
                    env[var["name"]] = value
        return env

    async def _key_value(self, var: JsonObject) -> str | None:
        """The value of a ``secretKeyRef`` or ``configMapKeyRef``; None when it is missing and optional."""
        value_from = var["valueFrom"]
        plural = "secrets" if "secretKeyRef" in value_from else "configmaps"
        ref = value_from.get("secretKeyRef") or value_from.get("configMapKeyRef")
        if ref is None:
            raise PodFailure("LocalKubeletUnsupported", f"env {var['name']}: unsupported valueFrom {value_from}")
        data = await self._data_of(plural, ref["name"], ref.get("optional", False))
        if data is not None and ref["key"] in data:
            return data[ref["key"]]
        if ref.get("optional", False):
            return None
        raise ConfigMissing(f"couldn't find key {ref['key']} in {_KINDS[plural]} {self._namespace}/{ref['name']}")

    async def _keys_of(self, source: JsonObject) -> dict[str, str]:
        """Every key of an ``envFrom`` Secret or ConfigMap, prefixed; keys that are no variable name are skipped."""
        plural = "secrets" if "secretRef" in source else "configmaps"
        ref = source.get("secretRef") or source.get("configMapRef") or {}
        data = await self._data_of(plural, ref["name"], ref.get("optional", False)) or {}
        prefix = source.get("prefix", "")
        return {prefix + key: value for key, value in data.items() if _ENV_NAME.match(prefix + key)}

    async def _data_of(self, plural: str, name: str, optional: bool) -> dict[str, str] | None:
        """A Secret's or ConfigMap's keys and decoded values; None when it is missing and optional."""
        assert self._session is not None
        async with self._session.get(api_path("v1", plural, self._namespace, name)) as response:
            if response.status == 404:
                if optional:
                    return None
                raise ConfigMissing(f'{_KINDS[plural].lower()} "{name}" not found')
            response.raise_for_status()
            obj = await response.json()
        if plural == "secrets":
            return {key: _decoded(value) for key, value in (obj.get("data") or {}).items()}
        return {**{key: _decoded(value) for key, value in (obj.get("binaryData") or {}).items()}, **obj.get("data", {})}

    async def _prepare(self, pod: _Pod, body: JsonObject, env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
        """The argv and environment of the pod's process, after allocating its host ports."""
        container = pod.container
        raw_argv = [expand(part, env) for part in (container.get("command") or []) + (container.get("args") or [])]
        if not raw_argv:
            raise PodFailure("LocalKubeletUnsupported", "the container has no command: there is no image to run")
        declared = self._declared_ports(container)
        probe_port = ((container.get("readinessProbe") or {}).get("httpGet")
                      or (container.get("readinessProbe") or {}).get("tcpSocket") or {}).get("port")
        if probe_port is not None:
            declared.add(_named_port(container, probe_port))
        taken = self._ports_in_use(pod)
        before = self._host_ports.get(pod.name, {})
        for port in sorted(declared):
            candidates = (before.get(port, port), port)
            pod.ports[port] = next((c for c in candidates if c not in taken and not _port_busy(c)), None) or _free_port()
        self._host_ports[pod.name] = dict(pod.ports)
        paths = self._empty_dirs(container, body)

        async def rewritten(text: str) -> str:
            return await self._resolve_services(_rewrite_paths(_rewrite_ports(text, pod.ports), paths))

        argv = [await rewritten(part) for part in raw_argv]
        for name, value in env.items():
            env[name] = await rewritten(value)
        return argv, {**os.environ, **env}

    @staticmethod
    def _declared_ports(container: JsonObject) -> set[int]:
        return {int(port["containerPort"]) for port in container.get("ports") or []}

    def _ports_in_use(self, pod: _Pod) -> set[int]:
        """Host ports other pods hold (running, stopping, or allocated and not started) or have claimed."""
        taken: set[int] = set()
        for other in self._pods.values():
            if other is pod:
                continue
            if other.stopping or other.process is None or other.process.returncode is None:
                taken.update(other.ports.values())
            if other.process is None and not other.deleted:
                taken.update(other.claimed)
        return taken

    def _empty_dirs(self, container: JsonObject, body: JsonObject) -> dict[str, Path]:
        """A fresh host directory for each emptyDir volume the container mounts, by mount path."""
        assert self._volume_root is not None, "the kubelet has not started"
        empty = {v["name"] for v in (body.get("spec") or {}).get("volumes") or [] if "emptyDir" in v}
        self._incarnations += 1
        paths: dict[str, Path] = {}
        for mount in container.get("volumeMounts") or []:
            if mount["name"] in empty:
                paths[mount["mountPath"]] = self._volume_root / str(self._incarnations) / mount["name"]
                paths[mount["mountPath"]].mkdir(parents=True)
        return paths

    def _field_value(self, body: JsonObject, var: JsonObject) -> str:
        field_path = (var.get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath")
        metadata = body.get("metadata", {})
        values = {
            "metadata.name": metadata.get("name"),
            "metadata.namespace": metadata.get("namespace", self._namespace),
            "metadata.uid": metadata.get("uid"),
            "spec.nodeName": NODE_NAME,
            "spec.serviceAccountName": body.get("spec", {}).get("serviceAccountName", "default"),
            "status.podIP": LOCAL_IP,
            "status.hostIP": LOCAL_IP,
        }
        if field_path in values:
            return str(values[field_path] or "")
        keyed = _FIELD_KEY.match(field_path or "")
        if keyed is not None:
            return str((metadata.get(keyed[1]) or {}).get(keyed[2], ""))
        raise PodFailure("LocalKubeletUnsupported", f"env {var['name']}: unsupported valueFrom {var.get('valueFrom')}")

    async def _resolve_services(self, text: str) -> str:
        """Service host names become 127.0.0.1, and their ports the host ports of the pods behind them."""
        replacements: dict[str, str] = {}
        for match in _SERVICE_HOST.finditer(text):
            port = match["port"]
            if port is not None:
                port = str(await self._service_host_port(match["host"], int(port)))
            replacements[match[0]] = LOCAL_IP if port is None else f"{LOCAL_IP}:{port}"
        return _SERVICE_HOST.sub(lambda m: replacements[m[0]], text)

    async def _service_host_port(self, host: str, port: int) -> int:
        assert self._session is not None
        parts = host.split(".")
        namespace = parts[1] if parts[1] != "svc" else self._namespace
        async with self._session.get(api_path("v1", "services", namespace, parts[0])) as response:
            if response.status != 200:
                return port
            service = await response.json()
        selector = service.get("spec", {}).get("selector") or {}
        service_ports = [p for p in service.get("spec", {}).get("ports") or [] if int(p.get("port", 0)) == port]
        target = service_ports[0].get("targetPort", port) if service_ports else port
        label_selector = ",".join(f"{key}={value}" for key, value in selector.items())
        for pod in self._pods.values():
            if selector and not pod.gone and labels_match(pod.labels, label_selector):
                container_port = _named_port(pod.container, target)
                return pod.ports.get(container_port, container_port)
        return port

    async def _probe(self, pod: _Pod, probe: JsonObject) -> None:
        assert self._session is not None
        http = probe.get("httpGet")
        port = pod.ports[_named_port(pod.container, (http or probe.get("tcpSocket") or {})["port"])]
        url = f"http://{LOCAL_IP}:{port}{(http or {}).get('path', '/')}"
        timeout = aiohttp.ClientTimeout(total=max(self._probe_period_s * 5, 1.0))
        while True:
            await asyncio.sleep(self._probe_period_s)
            try:
                if http is not None:
                    async with self._session.get(url, timeout=timeout) as response:
                        ready = 200 <= response.status < 400
                else:
                    _, writer = await asyncio.wait_for(asyncio.open_connection(LOCAL_IP, port), timeout.total)
                    writer.close()
                    ready = True
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
                ready = False
            if ready != pod.ready and pod.process is not None and pod.process.returncode is None:
                pod.ready = ready
                await self._patch_status(pod, self._status(pod, "Running",
                                                           {"running": {"startedAt": pod.started_at}}))

    async def _terminate(self, pod: _Pod) -> None:
        """SIGTERM to the main process, as a container runtime sends it to PID 1; once that has exited, or the grace
        period is over, SIGKILL to what is left, as the kernel kills a PID namespace whose init ends. Done when every
        process the pod started has exited.

        A real pod's processes die with its network namespace; here a daemon the container started (Ray's GCS) may
        outlive the container's main process, and would hold its port for the next pod.
        """
        process = pod.process
        if process is None or process.returncode is not None:
            return
        pod.stopping = True
        descendants: list[psutil.Process] = []
        with contextlib.suppress(psutil.Error):
            descendants = psutil.Process(process.pid).children(recursive=True)
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        grace_s = self._termination_grace_s if pod.grace_s is None else min(pod.grace_s, self._termination_grace_s)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(process.wait(), grace_s)
        self._kill_group(pod, signal.SIGKILL)
        await process.wait()
        _, alive = await asyncio.to_thread(psutil.wait_procs, descendants, timeout=self._termination_grace_s)
        for leftover in alive:
            with contextlib.suppress(psutil.Error):
                leftover.kill()
        pod.stopping = False

    def _kill_group(self, pod: _Pod, sig: signal.Signals) -> None:
        """Signal the process group and any descendants that left it (a container has no way out)."""
        if pod.process is None:
            return
        pid = pod.process.pid
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    child.send_signal(sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)

    def _status(self, pod: _Pod, phase: str, state: JsonObject) -> JsonObject:
        now = _now()
        running = phase == "Running"
        ready = "True" if running and pod.ready else "False"
        status: JsonObject = {
            "phase": phase,
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": ready, "lastTransitionTime": now},
                {"type": "Ready", "status": ready, "lastTransitionTime": now},
            ],
            "containerStatuses": [{
                "name": pod.container.get("name", "main"),
                "image": pod.container.get("image", ""),
                "ready": ready == "True",
                "started": running,
                "restartCount": 0,
                "state": state,
            }],
        }
        if phase != "Pending":
            status.update({"podIP": LOCAL_IP, "podIPs": [{"ip": LOCAL_IP}], "hostIP": LOCAL_IP,
                           "startTime": pod.started_at or now})
        return status

    async def _patch_status(self, pod: _Pod, status: JsonObject) -> None:
        if pod.gone:
            return  # the pod object is gone, or a newer pod of the same name owns it now
        assert self._session is not None
        path = api_path("v1", "pods", self._namespace, pod.name, "status")
        async with self._session.patch(path, json={"status": status},
                                       headers={"Content-Type": "application/merge-patch+json"}) as response:
            # 503: this node is lost, and nothing it reports is heard; it runs on, as a cut-off kubelet does.
            if response.status not in (200, 404, 503):
                response.raise_for_status()
