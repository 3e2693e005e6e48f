"""Pod parts that do not depend on Ray: security, volumes, scheduling, probes."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from bigmodel.api.common import Scheduling
from bigmodel.builders.resources import shm_size_limit

RUN_AS_USER = 1000
RUN_AS_GROUP = 100
RAY_TMP_DIR = "/tmp/ray"
SHM_DIR = "/dev/shm"


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_GROUP,
        "fsGroup": RUN_AS_GROUP,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    # Ray writes session files and spills objects under /tmp, so the root filesystem stays writable.
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": False,
    }


@dataclass(frozen=True)
class ClaimMount:
    """A PersistentVolumeClaim mounted where the storage path says: a job's checkpoints, a service's model."""

    volume: str
    claim_name: str
    path: str
    read_only: bool


def volumes(memory: int | str, claim: ClaimMount | None) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = [
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": shm_size_limit(memory)}},
        # Ray's session directory grows with logs; an emptyDir keeps it out of the container's image layer.
        {"name": "ray-tmp", "emptyDir": {}},
    ]
    if claim is not None:
        volume: dict[str, Any] = {"claimName": claim.claim_name}
        if claim.read_only:
            volume["readOnly"] = True
        result.append({"name": claim.volume, "persistentVolumeClaim": volume})
    return result


def volume_mounts(claim: ClaimMount | None) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = [
        {"name": "shm", "mountPath": SHM_DIR},
        {"name": "ray-tmp", "mountPath": RAY_TMP_DIR},
    ]
    if claim is not None:
        result.append({"name": claim.volume, "mountPath": claim.path, "readOnly": claim.read_only})
    return result


def scheduling(group: Scheduling) -> dict[str, Any]:
    """The pod-spec fields of a group's scheduling, only those the user set."""
    result: dict[str, Any] = {}
    if group.node_selector:
        result["nodeSelector"] = dict(group.node_selector)
    if group.tolerations:
        result["tolerations"] = [toleration.to_wire() for toleration in group.tolerations]
    if group.affinity is not None:
        result["affinity"] = copy.deepcopy(group.affinity)
    if group.priority_class_name:
        result["priorityClassName"] = group.priority_class_name
    return result


def http_probe(path: str, port: int, *, initial_delay: int, period: int, timeout: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port, "scheme": "HTTP"},
        "initialDelaySeconds": initial_delay,
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "successThreshold": 1,
        "failureThreshold": failures,
    }
