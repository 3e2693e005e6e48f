"""Names and labels of a BigModelJob's children.

Every name is derived from the job and a cluster generation, so a restarted operator finds what it made instead of
making it twice, and a rebuilt cluster (a new generation) never waits for the old pods' names to be freed.
"""

from __future__ import annotations

from typing import Literal

Role = Literal["head", "worker"]

DNS_LABEL_MAX_LENGTH = 63
# ObjectMeta.name allows 48 characters and WorkerGroup.replicas at most 1024 (indexes 0..1023); the unit tests check
# that these copies still match the API models.
MAX_JOB_NAME_LENGTH = 48
MAX_WORKERS_DIGITS = 4
_GENERATION_PREFIX = "-g"
_HEAD_SUFFIX = "-head"
_WORKER_INFIX = "-w"
# Whatever a DNS label has left after the longest job name and the longest suffix is the room for the generation.
MAX_GENERATION_DIGITS = (
    DNS_LABEL_MAX_LENGTH
    - MAX_JOB_NAME_LENGTH
    - len(_GENERATION_PREFIX)
    - max(len(_HEAD_SUFFIX), len(_WORKER_INFIX) + MAX_WORKERS_DIGITS)
)

JOB_LABEL = "bigmodel.dev/job"
CLUSTER_LABEL = "bigmodel.dev/cluster"
GENERATION_LABEL = "bigmodel.dev/generation"
ROLE_LABEL = "bigmodel.dev/role"
WORKER_INDEX_LABEL = "bigmodel.dev/worker-index"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
OPERATOR_NAME = "bigmodel-operator"


def cluster_name(job_name: str, generation: int) -> str:
    if generation < 0 or len(str(generation)) > MAX_GENERATION_DIGITS:
        raise ValueError(f"cluster generation {generation} is outside 0..{10**MAX_GENERATION_DIGITS - 1}")
    return f"{job_name}{_GENERATION_PREFIX}{generation}"


def head_pod_name(job_name: str, generation: int) -> str:
    return f"{cluster_name(job_name, generation)}{_HEAD_SUFFIX}"


def head_service_name(job_name: str, generation: int) -> str:
    return head_pod_name(job_name, generation)


def worker_pod_name(job_name: str, generation: int, index: int) -> str:
    """`<cluster>-w<index>`: a longer infix would push the longest job name's pod names past 63 characters."""
    if not 0 <= index < 10**MAX_WORKERS_DIGITS:
        raise ValueError(f"worker index {index} is outside 0..{10**MAX_WORKERS_DIGITS - 1}")
    return f"{cluster_name(job_name, generation)}{_WORKER_INFIX}{index}"


def submission_id(job_uid: str, generation: int) -> str:
    """The Ray job submission id: resubmitting after an operator restart finds the run instead of starting another."""
    return f"bigmodel-{job_uid[:8]}-g{generation}"


def labels(job_name: str, generation: int, role: Role, index: int | None = None) -> dict[str, str]:
    if (role == "worker") != (index is not None):
        raise ValueError("a worker index is required for workers and only for workers")
    result = {
        "app.kubernetes.io/name": "bigmodel",
        "app.kubernetes.io/instance": job_name,
        "app.kubernetes.io/component": f"ray-{role}",
        MANAGED_BY_LABEL: OPERATOR_NAME,
        "app.kubernetes.io/part-of": OPERATOR_NAME,
        JOB_LABEL: job_name,
        CLUSTER_LABEL: cluster_name(job_name, generation),
        GENERATION_LABEL: str(generation),
        ROLE_LABEL: role,
    }
    if index is not None:
        result[WORKER_INDEX_LABEL] = str(index)
    return result


def job_selector(job_name: str) -> dict[str, str]:
    """Every child of the job, whatever its generation."""
    return {MANAGED_BY_LABEL: OPERATOR_NAME, JOB_LABEL: job_name}


def cluster_selector(job_name: str, generation: int) -> dict[str, str]:
    return job_selector(job_name) | {CLUSTER_LABEL: cluster_name(job_name, generation)}
