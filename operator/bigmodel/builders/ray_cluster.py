"""The Ray cluster a BigModelJob or a BigModelService runs on: a head Service, a head pod and worker pods."""

from __future__ import annotations

import math
from typing import Any

from bigmodel.api import wire
from bigmodel.api.common import NodeGroup
from bigmodel.api.job import BigModelJob
from bigmodel.api.service import BigModelService
from bigmodel.api.wire import (
    RAY_AGENT_PORT,
    RAY_CLIENT_PORT,
    RAY_DASHBOARD_PORT,
    RAY_GCS_PORT,
)
from bigmodel.builders import gang, naming
from bigmodel.builders import gcs_fault_tolerance as fault_tolerance
from bigmodel.builders.gcs_fault_tolerance import GcsFaultTolerance
from bigmodel.builders.owned import ClusterOwner, namespace_and_uid, object_metadata
from bigmodel.builders.pod import (
    RAY_TMP_DIR,
    ClaimMount,
    container_security_context,
    http_probe,
    pod_security_context,
    scheduling,
    volume_mounts,
    volumes,
)
from bigmodel.builders.ray_token import token_env
from bigmodel.builders.resources import requirements
from bigmodel.builders.serving_env import serving_env

HEAD_CONTAINER = "ray-head"
WORKER_CONTAINER = "ray-worker"
# A service's pods, at least: long enough for Ray to drain a node's Serve replicas. A job's say in its spec how long a
# checkpoint may take (terminationGracePeriodSeconds).
TERMINATION_GRACE_SECONDS = 60
# What Ray needs of a grace period to stop a node's processes once its drain is over.
RAY_STOP_SECONDS = 10

_RAY_PORTS = {"gcs": RAY_GCS_PORT, "dashboard": RAY_DASHBOARD_PORT, "client": RAY_CLIENT_PORT}
# Jobs' drivers report progress on the head; services' Serve proxies listen on every node (proxy_location
# EveryNode): the head's always, a worker's while it hosts a replica.
_HEAD_PORTS: dict[str, dict[str, int]] = {
    "BigModelJob": _RAY_PORTS | {"progress": wire.PROGRESS_PORT},
    "BigModelService": _RAY_PORTS | {"serve": wire.SERVE_PORT},
}
_SERVICE_WORKER_PORTS = {"serve": wire.SERVE_PORT}


def head_address(owner: str, namespace: str, generation: int, kind: naming.OwnerKind = "BigModelJob") -> str:
    return f"{naming.head_service_name(owner, generation, kind)}.{namespace}.svc:{RAY_GCS_PORT}"


def _http_url(pod_ip: str, port: int) -> str:
    host = f"[{pod_ip}]" if ":" in pod_ip else pod_ip
    return f"http://{host}:{port}"


def dashboard_url(pod_ip: str) -> str:
    return _http_url(pod_ip, RAY_DASHBOARD_PORT)


def serve_url(pod_ip: str) -> str:
    return _http_url(pod_ip, wire.SERVE_PORT)


def progress_url(pod_ip: str) -> str:
    return _http_url(pod_ip, wire.PROGRESS_PORT)


def _env(owner: ClusterOwner, generation: int) -> list[dict[str, Any]]:
    namespace, _ = namespace_and_uid(owner)
    # The user's entries come last so that they can refer to these with $(NAME).
    return [
        {"name": wire.POD_IP_ENV, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": wire.POD_NAME_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {
            "name": wire.RAY_HEAD_ADDRESS_ENV,
            "value": head_address(owner.metadata.name, namespace, generation, owner.kind),
        },
        {"name": wire.OWNER_ENV[owner.kind], "value": owner.metadata.name},
        {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"},
        *token_env(owner, generation),
        *serving_env(owner),
        *_drain_env(owner),
        *(variable.to_wire() for variable in owner.spec.env),
    ]


def _env_from(owner: ClusterOwner) -> dict[str, Any]:
    # The kubelet reads these Secrets and ConfigMaps; entries of env, the operator's included, win over their keys.
    return {"envFrom": [source.to_wire() for source in owner.spec.env_from]} if owner.spec.env_from else {}


def checkpoint_claim(job: BigModelJob) -> ClaimMount | None:
    checkpoint = job.spec.checkpoint
    if not checkpoint.volume_claim_name or not checkpoint.storage:
        return None
    return ClaimMount("checkpoints", checkpoint.volume_claim_name, checkpoint.storage, read_only=False)


Probe = tuple[str, int]
"""Ray's health check of a node: an HTTP (path, port), its liveness probe."""


def _container(
    owner: ClusterOwner,
    generation: int,
    name: str,
    group: NodeGroup,
    command: list[str],
    health: Probe,
    claim: ClaimMount | None,
) -> dict[str, Any]:
    path, port = health
    return {
        "name": name,
        "image": owner.spec.image,
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        "env": _env(owner, generation),
        **_env_from(owner),
        "resources": requirements(group.resources),
        "volumeMounts": volume_mounts(claim),
        "readinessProbe": _readiness(owner, health),
        # A Ray node that stops answering for two minutes is gone; its pod fails and the operator replaces it.
        "livenessProbe": http_probe(path, port, initial_delay=30, period=10, timeout=5, failures=12),
        "securityContext": container_security_context(),
    }


def _readiness(owner: ClusterOwner, ray_health: Probe) -> dict[str, Any]:
    """A job's pods are ready when their Ray node is. A service's are ready when their Serve proxy is: the Service
    clients call sends to ready pods only, and Serve runs a proxy only on the head and where a replica runs (ray/serve/
    _private/controller.py _update_proxy_nodes), answering 503 on /-/healthz while its node drains. Looked at every
    2 s, three misses in a row: a proxy that died costs its pod's share of requests for about 6 s, not 30. Liveness
    stays Ray's own health, which a node without a proxy has too."""
    if isinstance(owner, BigModelJob):
        return http_probe(*ray_health, initial_delay=5, period=5, timeout=2, failures=6)
    return http_probe(wire.SERVE_HEALTH_PATH, wire.SERVE_PORT, initial_delay=5, period=2, timeout=2, failures=3)


def _pod(
    owner: ClusterOwner,
    generation: int,
    name: str,
    pod_labels: dict[str, str],
    group: NodeGroup,
    container: dict[str, Any],
    claim: ClaimMount | None,
    gcs: GcsFaultTolerance | None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [container],
        "volumes": volumes(group.resources.memory, claim),
        # The operator replaces failed pods itself, so it can count replacements against the failure budget.
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": _grace_seconds(owner),
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        **scheduling(group),
        **gang.pod_spec(owner),
    }
    if owner.spec.service_account_name:
        spec["serviceAccountName"] = owner.spec.service_account_name
    else:
        # Code running on Ray gets no Kubernetes API token it was not given.
        spec["automountServiceAccountToken"] = False
    if owner.spec.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": secret} for secret in owner.spec.image_pull_secrets]
    metadata = object_metadata(owner, name, pod_labels | gang.pod_labels(owner, generation))
    annotations = gang.pod_annotations(owner, generation) | (fault_tolerance.annotations() if gcs else {})
    if annotations:
        metadata.setdefault("annotations", {}).update(annotations)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def _grace_seconds(owner: ClusterOwner) -> int:
    if isinstance(owner, BigModelJob):
        return owner.spec.termination_grace_period_seconds
    # A service's replicas finish their requests before they stop, and one may take the service's whole timeout.
    return max(TERMINATION_GRACE_SECONDS, math.ceil(owner.spec.limits.timeout_seconds) + 2 * RAY_STOP_SECONDS)


def _drain_env(owner: ClusterOwner) -> list[dict[str, str]]:
    """On SIGTERM `ray start` marks its node draining, with a deadline, before it stops the node. A run sees the
    drain, checkpoints at its next step and lets Ray Train restart it from there (`runtime/interruptions`); Serve
    stops routing to the node's proxy and replicas, which finish their requests. The drain lasts the grace period
    less what Ray needs to stop its processes afterwards."""
    grace = _grace_seconds(owner)
    drain = max(grace - RAY_STOP_SECONDS, grace * 3 // 4)
    env = [{"name": wire.RAY_DRAIN_TIMEOUT_ENV, "value": str(drain)}]
    if isinstance(owner, BigModelJob):
        env.append({"name": wire.RAY_TRAIN_PREEMPTION_POLL_ENV, "value": "1"})
    return env


# A worker pod that dies takes its raylet with it. With Ray's defaults the GCS needs several missed 3 s health checks
# to notice, and until then Ray Train keeps placing the restarted worker group on the dead node, each try spending
# one of the job's maxWorkerFailures. Checking every second, five misses (a busy node may lag a few), take ~5 s.
_NODE_FAILURE_DETECTION = [
    {"name": "RAY_health_check_period_ms", "value": str(wire.RAY_HEALTH_CHECK_PERIOD_MS)},
    {"name": "RAY_health_check_failure_threshold", "value": str(wire.RAY_HEALTH_CHECK_FAILURES)},
]


def gcs_for(owner: ClusterOwner, gcs: GcsFaultTolerance | None) -> GcsFaultTolerance | None:
    """GCS fault tolerance applies to services only (builders/gcs_fault_tolerance.py says why)."""
    return gcs if isinstance(owner, BigModelService) else None


def head_pod(
    owner: ClusterOwner, generation: int, claim: ClaimMount | None, gcs: GcsFaultTolerance | None = None
) -> dict[str, Any]:
    # The head drives the run (or runs Serve's controller and a proxy) and computes nothing: with no CPUs or GPUs
    # advertised, Ray places all training and every model replica on workers, which the operator can scale.
    command = [
        "ray", "start", "--head", "--block",
        f"--port={RAY_GCS_PORT}",
        "--dashboard-host=0.0.0.0",
        f"--dashboard-port={RAY_DASHBOARD_PORT}",
        f"--ray-client-server-port={RAY_CLIENT_PORT}",
        f"--dashboard-agent-listen-port={RAY_AGENT_PORT}",
        "--num-cpus=0",
        "--num-gpus=0",
        f"--node-name=$({wire.POD_NAME_ENV})",
        f"--temp-dir={RAY_TMP_DIR}",
        "--disable-usage-stats",
    ]  # fmt: skip
    group = owner.spec.head
    gcs = gcs_for(owner, gcs)
    health = ("/api/gcs_healthz", RAY_DASHBOARD_PORT)
    container = _container(owner, generation, HEAD_CONTAINER, group, command, health, claim)
    container["ports"] = _container_ports(_HEAD_PORTS[owner.kind])
    container["env"] = [*container["env"], *_NODE_FAILURE_DETECTION]
    if gcs is not None:
        container["command"] = [*command, *fault_tolerance.head_args()]
        container["env"] = [*container["env"], *fault_tolerance.head_env(owner, generation, gcs)]
    owner_name, kind = owner.metadata.name, owner.kind
    name = naming.head_pod_name(owner_name, generation, kind)
    pod_labels = naming.pod_labels(owner_name, generation, "head", kind=kind)
    return _pod(owner, generation, name, pod_labels, group, container, claim, gcs)


def worker_pod(
    owner: ClusterOwner,
    generation: int,
    index: int,
    claim: ClaimMount | None,
    gcs: GcsFaultTolerance | None = None,
) -> dict[str, Any]:
    group = owner.spec.workers
    # The node name is the pod's, so the operator can tell which pod hosts which Serve replica. The temp dir is
    # named although it is Ray's default: Ray would follow an image's TMPDIR out of the ray-tmp volume, and a worker
    # that names none takes the head's path.
    command = [
        "ray", "start", "--block",
        f"--address=$({wire.RAY_HEAD_ADDRESS_ENV})",
        f"--node-ip-address=$({wire.POD_IP_ENV})",
        f"--node-name=$({wire.POD_NAME_ENV})",
        f"--dashboard-agent-listen-port={RAY_AGENT_PORT}",
        f"--num-cpus={group.resources.ray_cpus()}",
        f"--num-gpus={group.resources.gpu}",
        f"--temp-dir={RAY_TMP_DIR}",
        "--disable-usage-stats",
    ]  # fmt: skip
    gcs = gcs_for(owner, gcs)
    health = ("/api/local_raylet_healthz", RAY_AGENT_PORT)
    container = _container(owner, generation, WORKER_CONTAINER, group, command, health, claim)
    if isinstance(owner, BigModelService):
        container["ports"] = _container_ports(_SERVICE_WORKER_PORTS)
        container["env"] = [*container["env"], *_worker_proxy_env()]
    if gcs is not None:
        container["env"] = [*container["env"], *fault_tolerance.worker_env()]
    owner_name, kind = owner.metadata.name, owner.kind
    name = naming.worker_pod_name(owner_name, generation, index, kind)
    pod_labels = naming.pod_labels(owner_name, generation, "worker", index, kind=kind)
    return _pod(owner, generation, name, pod_labels, group, container, claim, gcs)


def _container_ports(ports: dict[str, int]) -> list[dict[str, Any]]:
    return [{"name": name, "containerPort": port, "protocol": "TCP"} for name, port in ports.items()]


def _worker_proxy_env() -> list[dict[str, str]]:
    """A worker's Serve proxy binds the serve port its pod declares. Serve gives every proxy the port of its
    http_options, which this equals; the variable (ray/serve/_private/proxy.py apply_per_node_port_overrides, worker
    nodes only) says so per pod, so that the test-only local kubelet (tests/support/kubelet.py), which runs every pod
    on one host and rewrites a busy declared port number wherever it appears in env values, gives each co-located
    worker proxy a port of its own. On a cluster each pod has its own IP and it changes nothing."""
    return [{"name": wire.SERVE_WORKER_PROXY_PORT_ENV, "value": str(wire.SERVE_PORT)}]


def head_service(owner: ClusterOwner, generation: int) -> dict[str, Any]:
    """ClusterIP only: Ray's ports are never exposed outside the Kubernetes cluster, token or not."""
    owner_name, kind = owner.metadata.name, owner.kind
    name = naming.head_service_name(owner_name, generation, kind)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_metadata(owner, name, naming.labels(owner_name, generation, "head", kind=kind)),
        "spec": {
            "type": "ClusterIP",
            "selector": naming.cluster_selector(owner_name, generation, kind) | {wire.ROLE_LABEL: "head"},
            "ports": [
                {"name": port_name, "port": port, "targetPort": port_name, "protocol": "TCP"}
                for port_name, port in _HEAD_PORTS[kind].items()
            ],
            # Workers resolve the head by this name while it starts; waiting for readiness would fail their joins.
            "publishNotReadyAddresses": True,
        },
    }
