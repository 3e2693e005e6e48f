"""What a job's pods remember for it, so that a lost status write costs nothing.

The status is written last in a pass. When that write fails, or the operator is killed between making pods and
writing the status, the stored status lags what exists: it names an older cluster generation and fewer restarts.
Read from the status alone, the next pass would delete the cluster it just built and count the same failure again.
So every pod carries the job's counts when it was made (two annotations), and a pass starts from the newer of the
status and the pods: the newest generation whose head exists, and the highest counts any pod carries.
"""

from __future__ import annotations

from bigmodel.api.job import BigModelJobStatus
from bigmodel.api.wire import RESTARTS_ANNOTATION, WORKERS_REPLACED_ANNOTATION
from bigmodel.reconcile.observed import ClusterObservation, PodView
from bigmodel.reconcile.plans import Plan


def current_generation(status: BigModelJobStatus | None, seen: ClusterObservation) -> int:
    """The generation the status names, or a newer one whose head pod exists (built by a pass whose status write
    was lost)."""
    return seen.newest_built(status.cluster_generation if status else 0)


def catch_up(status: BigModelJobStatus, seen: ClusterObservation) -> None:
    """Bring the status up to what the pods say: the current generation and the counts."""
    generation = current_generation(status, seen)
    if generation != status.cluster_generation:
        head = seen.head(generation)
        status.cluster_generation = generation
        status.ray_job_id = None
        status.starting_since = head.created if head else None
    status.restarts = max(status.restarts, _highest(seen.pods, RESTARTS_ANNOTATION))
    status.workers.replaced = max(status.workers.replaced, _highest(seen.pods, WORKERS_REPLACED_ANNOTATION))


def stamp(plan: Plan[BigModelJobStatus]) -> None:
    """Every pod the plan creates carries the counts the plan's status ends with."""
    counts = {
        RESTARTS_ANNOTATION: str(plan.status.restarts),
        WORKERS_REPLACED_ANNOTATION: str(plan.status.workers.replaced),
    }
    for obj in plan.create:
        if obj.get("kind") == "Pod":
            obj.setdefault("metadata", {}).setdefault("annotations", {}).update(counts)


def _highest(pods: list[PodView], annotation: str) -> int:
    values = [pod.annotations.get(annotation, "") for pod in pods]
    return max((int(value) for value in values if value.isdigit()), default=0)
