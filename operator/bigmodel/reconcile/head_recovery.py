"""What to do about the lost head of a BigModelService's serving cluster.

Without GCS fault tolerance the cluster's state died with its head: it is rebuilt as a new generation. With it
(builders/gcs_fault_tolerance.py) the state is in Redis and the workers wait for a head to come back while their
Serve proxies go on serving, so the head is re-created in place: same name, same generation, the workers, the head
Service, the cluster's Secrets and the serving Service's selector untouched. A head pod's name is taken until the
pod is gone, so a failed one is deleted first and a Terminating one waited for.

In place only while that can work: the pods were built with fault tolerance (their annotation, not today's
settings: a cluster made without Redis has no state to come back to), the operator still has Redis (a head built
without it would start an empty cluster the workers cannot join), the cluster's shape is still the spec's (a head of
another shape would join workers of the old one), and a worker still runs (a worker whose raylet gave up waiting,
after RAY_gcs_rpc_server_reconnect_timeout_s, has failed: then nothing is left to keep).
"""

from __future__ import annotations

from typing import Literal

from bigmodel.api.wire import CLUSTER_SPEC_ANNOTATION, GCS_FAULT_TOLERANCE_ANNOTATION
from bigmodel.reconcile.observed import ClusterObservation

HeadRecovery = Literal["rebuild", "clear", "wait", "restart"]
"""rebuild: a new generation. clear: delete the failed head pod, whose name the new one takes. wait: the old head pod
is Terminating. restart: create the head pod again."""


def head_recovery(
    seen: ClusterObservation, generation: int, head_name: str, *, fault_tolerant: bool, digest: str
) -> HeadRecovery:
    """For a generation whose head is lost (failed, or gone while workers remain); `fault_tolerant`: whether the
    operator builds heads with Redis now; `digest`: the cluster shape the spec asks for."""
    workers = [pod for pod in seen.workers(generation) if not pod.failed]
    kept = (
        fault_tolerant
        and bool(workers)
        and all(GCS_FAULT_TOLERANCE_ANNOTATION in pod.annotations for pod in workers)
        and all(pod.annotations.get(CLUSTER_SPEC_ANNOTATION) == digest for pod in workers)
    )
    if not kept:
        return "rebuild"
    old = next((pod for pod in seen.pods_of(generation) if pod.name == head_name), None)
    if old is None:
        return "restart"
    return "wait" if old.deleting else "clear"
