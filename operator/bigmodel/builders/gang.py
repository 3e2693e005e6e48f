"""Gang scheduling of a job's Ray cluster: its pods are admitted all together or not at all (README, "Gang scheduling").

Two schedulers that platform teams run, both optional, chosen by the job:

- Kueue (spec.queueName): every pod of a cluster generation joins one Kueue pod group, named after the cluster, by
  two labels and a total-count annotation. Kueue's webhook gates each pod as it is created and lifts the gates of the
  whole group once its Workload is admitted: no pod is scheduled before admission, and the operator needs no Kueue
  API (nor any permission) for it.
- Volcano (spec.schedulerName: volcano): the pods name the volcano scheduler and a PodGroup whose minMember is every
  pod of the cluster; the operator makes the PodGroup before any pod, since Volcano does not schedule a pod whose
  group is missing.

A cluster generation is one group. A rebuilt cluster is a new group, queued again; a replacement worker joins its
generation's group with the same labels, as Kueue expects of a controller that replaces failed pods itself.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal
from typing import Any, Literal

from bigmodel.api import wire
from bigmodel.api.common import Resources, quantity_value
from bigmodel.api.job import BigModelJob
from bigmodel.builders import naming
from bigmodel.builders.owned import ClusterOwner, cluster_object_labels, object_metadata
from bigmodel.builders.resources import GPU_RESOURCE

Gang = Literal["kueue", "volcano"]


def gang(owner: ClusterOwner) -> Gang | None:
    """The scheduler that admits the owner's pods as one group; None: each pod is scheduled on its own."""
    if not isinstance(owner, BigModelJob):
        return None
    if owner.spec.scheduler_name == wire.VOLCANO_SCHEDULER:
        return "volcano"
    return "kueue" if owner.spec.queue_name else None


def group_size(job: BigModelJob) -> int:
    """Every pod of one cluster: the head and the workers."""
    return 1 + job.spec.workers.replicas


def fewest_workers(job: BigModelJob) -> int:
    """The workers the run cannot start without: all of them, or an elastic run's minReplicas."""
    return job.spec.workers.worker_range()[0]


def pod_labels(owner: ClusterOwner, generation: int) -> dict[str, str]:
    if gang(owner) != "kueue":
        return {}
    assert isinstance(owner, BigModelJob) and owner.spec.queue_name
    return {
        wire.KUEUE_QUEUE_LABEL: owner.spec.queue_name,
        wire.KUEUE_POD_GROUP_LABEL: naming.pod_group_name(owner.metadata.name, generation),
    }


def pod_annotations(owner: ClusterOwner, generation: int) -> dict[str, str]:
    scheduler = gang(owner)
    if scheduler is None:
        return {}
    assert isinstance(owner, BigModelJob)
    group = naming.pod_group_name(owner.metadata.name, generation)
    if scheduler == "volcano":
        return {wire.VOLCANO_GROUP_ANNOTATION: group}
    return {
        wire.KUEUE_POD_GROUP_TOTAL_COUNT_ANNOTATION: str(group_size(owner)),
        # The operator never refills a generation that lost all its pods (it builds the next one, a new group), so
        # the group may end once none of its pods runs or waits: Kueue then releases its quota and the pods'
        # finalizers. Left retriable, a deleted generation's group would wait for replacements for ever, and its
        # pods would stay Terminating. One running pod (the head) keeps the group alive while workers are replaced.
        wire.KUEUE_RETRIABLE_IN_GROUP_ANNOTATION: "false",
    }


def pod_spec(owner: ClusterOwner) -> dict[str, Any]:
    """Pod-spec fields of the gang: the scheduler's name, for Volcano."""
    return {"schedulerName": wire.VOLCANO_SCHEDULER} if gang(owner) == "volcano" else {}


def pod_group(owner: ClusterOwner, generation: int) -> dict[str, Any] | None:
    """The Volcano PodGroup of one cluster generation, owned by the job; None unless the job runs on Volcano."""
    if gang(owner) != "volcano":
        return None
    assert isinstance(owner, BigModelJob)
    name = naming.pod_group_name(owner.metadata.name, generation)
    # Volcano starts the group once its minimum fits: an elastic run's minReplicas, the rest joining as they can.
    spec: dict[str, Any] = {"minMember": 1 + fewest_workers(owner), "minResources": min_resources(owner)}
    if owner.spec.queue_name:
        spec["queue"] = owner.spec.queue_name
    return {
        "apiVersion": wire.VOLCANO_API_VERSION,
        "kind": "PodGroup",
        "metadata": object_metadata(owner, name, cluster_object_labels(owner, generation, "pod-group")),
        "spec": spec,
    }


def min_resources(job: BigModelJob) -> dict[str, str]:
    """What the group's minimum requests (requests equal limits in its pods): Volcano admits the group into its
    queue only when this much fits."""
    members: list[tuple[Resources, int]] = [
        (job.spec.head.resources, 1),
        (job.spec.workers.resources, fewest_workers(job)),
    ]
    cpu = sum((quantity_value(resources.cpu) * count for resources, count in members), Decimal(0))
    memory = sum((quantity_value(resources.memory) * count for resources, count in members), Decimal(0))
    gpus = sum(resources.gpu * count for resources, count in members)
    result = {"cpu": _cpu(cpu), "memory": str(int(memory.to_integral_value(rounding=ROUND_CEILING)))}
    if gpus:
        result[GPU_RESOURCE] = str(gpus)
    return result


def _cpu(cores: Decimal) -> str:
    """Whole cores as a number, anything finer in millicores (the smallest CPU unit Kubernetes keeps)."""
    if cores == cores.to_integral_value():
        return str(int(cores))
    return f"{int((cores * 1000).to_integral_value(rounding=ROUND_CEILING))}m"
