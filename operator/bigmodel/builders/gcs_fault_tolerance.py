"""GCS fault tolerance of a BigModelService's Ray cluster: its GCS keeps the cluster's tables in an external Redis.

Without it the GCS lives in the head's memory, and a lost head is a lost cluster: the operator rebuilds it as a new
generation and the service answers nothing until that one serves. With it a re-created head (same name, same
generation) reloads the tables from Redis; meanwhile the workers' raylets, Serve proxies and replicas wait for it
(RAY_gcs_rpc_server_reconnect_timeout_s) and go on serving through the proxies on the workers. Ray's Serve
controller is a detached actor with unlimited restarts pinned to whichever node is the head, so the restored GCS
restarts it there, and it recovers its applications from its checkpoint in the GCS (ray/serve/_private/
default_impl.py get_controller_impl).

Services only: a BigModelJob's driver runs on its head, so the run dies with the head whatever the GCS keeps, and a
job recovers by restarting from its last checkpoint on a new cluster anyway.

The operator is told where Redis is (OperatorSettings.gcs_redis_address) and reads its password from a Secret in its
own namespace; pods can only read Secrets of their own namespace, so each cluster gets its own copy (filled by the
controller, as its Ray token Secret is) and the head reads it from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bigmodel.api import wire
from bigmodel.builders import naming
from bigmodel.builders.owned import ClusterOwner, cluster_object_labels, namespace_and_uid, object_metadata

REDIS_SECRET_COMPONENT = "gcs-redis"
ANNOTATION_VALUE = "redis"


@dataclass(frozen=True)
class GcsFaultTolerance:
    """Where the Redis that keeps the services' GCS tables is, as the operator was configured."""

    redis_address: str


def storage_namespace(owner: ClusterOwner, generation: int) -> str:
    """One cluster's key prefix in Redis: the same for a re-created head, never the same for two clusters (another
    generation, or a later service of the same name, has another). Ray refuses an '@' in it; a uid has none."""
    _, uid = namespace_and_uid(owner)
    return f"{uid}-{generation}"


def redis_secret(owner: ClusterOwner, generation: int) -> dict[str, Any]:
    """The cluster's Redis password Secret, without its data: the controller, which alone reads the password, adds
    it."""
    name = naming.gcs_redis_secret_name(owner.metadata.name, generation, owner.kind)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": object_metadata(owner, name, cluster_object_labels(owner, generation, REDIS_SECRET_COMPONENT)),
        "type": "Opaque",
    }


def head_env(owner: ClusterOwner, generation: int, ft: GcsFaultTolerance) -> list[dict[str, Any]]:
    secret = naming.gcs_redis_secret_name(owner.metadata.name, generation, owner.kind)
    return [
        {"name": wire.RAY_REDIS_ADDRESS_ENV, "value": ft.redis_address},
        {
            "name": wire.REDIS_PASSWORD_ENV,
            "valueFrom": {"secretKeyRef": {"name": secret, "key": wire.GCS_REDIS_SECRET_KEY}},
        },
        {"name": wire.RAY_STORAGE_NAMESPACE_ENV, "value": storage_namespace(owner, generation)},
    ]


def head_args() -> list[str]:
    """`ray start --head` reads the password from this flag only (ray/scripts/scripts.py); the kubelet expands the
    reference when it starts the container."""
    return [f"--redis-password=$({wire.REDIS_PASSWORD_ENV})"]


def worker_env() -> list[dict[str, Any]]:
    """Every Ray process of a worker pod inherits it from `ray start`: the raylet, the Serve proxy and the replicas
    all keep waiting for the head, rather than the default 60 s."""
    return [{"name": wire.RAY_GCS_RECONNECT_TIMEOUT_ENV, "value": str(wire.GCS_RECONNECT_TIMEOUT_S)}]


def annotations() -> dict[str, str]:
    return {wire.GCS_FAULT_TOLERANCE_ANNOTATION: ANNOTATION_VALUE}
