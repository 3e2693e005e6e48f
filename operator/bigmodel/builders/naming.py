"""Names and labels of the children of a BigModelJob or a BigModelService (their "owner").

Every name is derived from the owner and a cluster generation, so a restarted operator finds what it made instead of
making it twice, and a rebuilt cluster (a new generation) never waits for the old pods' names to be freed. A job's
clusters are `<name>-g<N>` and a service's `<name>-s<N>`: a job and a service may share a name (a service usually
serves the job it is named after) without their pods colliding.
"""

from __future__ import annotations

from bigmodel.api import wire
from bigmodel.api.wire import OwnerKind, Role

DNS_LABEL_MAX_LENGTH = 63
# ObjectMeta.name allows 48 characters and WorkerGroup.replicas at most 1024 (indexes 0..1023); the unit tests check
# that these copies still match the API models.
MAX_JOB_NAME_LENGTH = 48
MAX_WORKERS_DIGITS = 4
_GENERATION_PREFIX = {"BigModelJob": "-g", "BigModelService": "-s"}
_HEAD_SUFFIX = "-head"
_WORKER_INFIX = "-w"
# Whatever a DNS label has left after the longest job name and the longest suffix is the room for the generation.
MAX_GENERATION_DIGITS = (
    DNS_LABEL_MAX_LENGTH
    - MAX_JOB_NAME_LENGTH
    - max(len(prefix) for prefix in _GENERATION_PREFIX.values())
    - max(len(_HEAD_SUFFIX), len(_WORKER_INFIX) + MAX_WORKERS_DIGITS)
)


def cluster_name(owner: str, generation: int, kind: OwnerKind = "BigModelJob") -> str:
    if generation < 0 or len(str(generation)) > MAX_GENERATION_DIGITS:
        raise ValueError(f"cluster generation {generation} is outside 0..{10**MAX_GENERATION_DIGITS - 1}")
    return f"{owner}{_GENERATION_PREFIX[kind]}{generation}"


def head_pod_name(owner: str, generation: int, kind: OwnerKind = "BigModelJob") -> str:
    return f"{cluster_name(owner, generation, kind)}{_HEAD_SUFFIX}"


def head_service_name(owner: str, generation: int, kind: OwnerKind = "BigModelJob") -> str:
    return head_pod_name(owner, generation, kind)


def worker_pod_name(owner: str, generation: int, index: int, kind: OwnerKind = "BigModelJob") -> str:
    """`<cluster>-w<index>`: a longer infix would push the longest owner name's pod names past 63 characters."""
    if not 0 <= index < 10**MAX_WORKERS_DIGITS:
        raise ValueError(f"worker index {index} is outside 0..{10**MAX_WORKERS_DIGITS - 1}")
    return f"{cluster_name(owner, generation, kind)}{_WORKER_INFIX}{index}"


def token_secret_name(owner: str, generation: int, kind: OwnerKind = "BigModelJob") -> str:
    """The Secret holding one cluster's Ray token (a Secret's name may be longer than a pod's)."""
    return f"{cluster_name(owner, generation, kind)}-ray-token"


def gcs_redis_secret_name(owner: str, generation: int, kind: OwnerKind = "BigModelService") -> str:
    """The Secret holding the Redis password of one cluster with GCS fault tolerance (its head reads it)."""
    return f"{cluster_name(owner, generation, kind)}-gcs-redis"


def network_policy_name(owner: str, generation: int, kind: OwnerKind = "BigModelJob") -> str:
    return cluster_name(owner, generation, kind)


def pod_group_name(job: str, generation: int) -> str:
    """The gang of one job cluster: Kueue's pod group (and the Workload Kueue names after it) or Volcano's PodGroup.
    Per generation, so that a rebuilt cluster is a new group, admitted anew."""
    return cluster_name(job, generation)


def serving_service_name(service: str) -> str:
    """The Kubernetes Service clients call; it ends in neither -head nor -w<i>, so no cluster name can take it."""
    return f"{service}-serve"


def submission_id(job_uid: str, generation: int) -> str:
    """The Ray job submission id: resubmitting after an operator restart finds the run instead of starting another."""
    return f"bigmodel-{job_uid[:8]}-g{generation}"


def owner_labels(owner: str, component: str, kind: OwnerKind) -> dict[str, str]:
    """What every child of an owner carries: the recommended app labels and the owner's own label."""
    return {
        wire.NAME_LABEL: wire.APP_NAME,
        wire.INSTANCE_LABEL: owner,
        wire.COMPONENT_LABEL: component,
        wire.MANAGED_BY_LABEL: wire.OPERATOR_NAME,
        wire.PART_OF_LABEL: wire.OPERATOR_NAME,
        wire.OWNER_LABEL[kind]: owner,
    }


def labels(
    owner: str, generation: int, role: Role, index: int | None = None, kind: OwnerKind = "BigModelJob"
) -> dict[str, str]:
    """The labels of every pod and head Service of a Ray cluster, of both kinds."""
    if (role == "worker") != (index is not None):
        raise ValueError("a worker index is required for workers and only for workers")
    result = owner_labels(owner, f"ray-{role}", kind) | {
        wire.CLUSTER_LABEL: cluster_name(owner, generation, kind),
        wire.GENERATION_LABEL: str(generation),
        wire.ROLE_LABEL: role,
    }
    if index is not None:
        result[wire.WORKER_INDEX_LABEL] = str(index)
    return result


def pod_labels(
    owner: str, generation: int, role: Role, index: int | None = None, kind: OwnerKind = "BigModelJob"
) -> dict[str, str]:
    """The labels of a Ray pod: its cluster's, and on a service's pods the mark the Service clients call selects
    (every pod of a service may run a Serve proxy; readiness says which do)."""
    result = labels(owner, generation, role, index, kind)
    if kind == wire.SERVICE_KIND:
        result[wire.SERVE_PROXY_LABEL] = "true"
    return result


def owner_selector(owner: str, kind: OwnerKind = "BigModelJob") -> dict[str, str]:
    """Every child of the owner, whatever its generation."""
    return {wire.MANAGED_BY_LABEL: wire.OPERATOR_NAME, wire.OWNER_LABEL[kind]: owner}


def cluster_selector(owner: str, generation: int, kind: OwnerKind = "BigModelJob") -> dict[str, str]:
    return owner_selector(owner, kind) | {wire.CLUSTER_LABEL: cluster_name(owner, generation, kind)}
