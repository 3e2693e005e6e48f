"""The Ray-cluster lifecycle both kinds share: generations, building, health, failed workers, removal.

A resource owns its Ray clusters by generation (`<job>-g<N>`, `<service>-s<N>`): a head Service, a head pod and
worker pods, all owned by the resource and stamped with digests of the spec they were built from. A job runs one
cluster at a time; a service has a serving cluster and, during an upgrade, a pending one and a retiring one. Every
verb here only adds to the plan, so a pass that runs twice does nothing twice.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Literal

from bigmodel.api.wire import GCS_FAULT_TOLERANCE_ANNOTATION, VOLCANO_GROUP_ANNOTATION
from bigmodel.builders import naming
from bigmodel.builders.gang import gang, pod_group
from bigmodel.builders.gcs_fault_tolerance import GcsFaultTolerance, redis_secret
from bigmodel.builders.network_policy import OperatorPeer, network_policy
from bigmodel.builders.owned import ClusterOwner
from bigmodel.builders.pod import ClaimMount
from bigmodel.builders.ray_cluster import gcs_for, head_pod, head_service, worker_pod
from bigmodel.builders.ray_token import token_secret
from bigmodel.reconcile.observed import ClusterObservation, PodView
from bigmodel.reconcile.plans import Outcome, Plan

HealthState = Literal["absent", "up", "lost", "draining"]
# Worker indexes only grow within a generation while replaced pods drain, and a pod name holds at most four digits.
_MAX_WORKER_INDEX = 10**4


@dataclass(frozen=True)
class ClusterHealth:
    """absent: nothing of the generation exists. up: its head runs. lost: its head failed or is gone while the
    rest is still there. draining: only pods being deleted are left."""

    state: HealthState
    head: PodView | None = None
    why: str = ""


class Clusters:
    """One pass's view of a resource's Ray clusters, and the changes it makes to them."""

    def __init__(
        self,
        owner: ClusterOwner,
        seen: ClusterObservation,
        plan: Plan[Any],
        *,
        claim: ClaimMount | None,
        stamp: dict[str, str],
        operator: OperatorPeer,
        gcs: GcsFaultTolerance | None = None,
    ) -> None:
        self._owner = owner
        self._operator = operator
        self._gcs = gcs_for(owner, gcs)
        """Where new clusters keep their GCS tables; None: in the head's memory."""
        self._seen = seen
        self._plan = plan
        self._claim = claim
        self._stamp = stamp
        """Annotations every new pod and head Service carries: digests of the spec parts they were built from."""

    def health(self, generation: int) -> ClusterHealth:
        head = self._seen.head(generation)
        if head is not None:
            if head.failed:
                return ClusterHealth("lost", head, f"head pod failed: {head.failure or head.phase}")
            return ClusterHealth("up", head)
        pods = self._seen.pods_of(generation)
        if not pods:
            return ClusterHealth("absent", why="head pod lost")
        if any(not pod.deleting for pod in pods):
            return ClusterHealth("lost", why="head pod lost")
        return ClusterHealth("draining", why="head pod lost")

    def next_generation(self, *known: int | None) -> int:
        """A generation no pod, Service or status slot has used: a new cluster never meets an old one's names."""
        used = self._seen.generations() | self._seen.foreign_generations | {g for g in known if g is not None}
        return max(used, default=0) + 1

    def build(self, generation: int, workers: int) -> None:
        """A new cluster: its NetworkPolicy and token Secret before anything that listens, and its Volcano PodGroup
        (if it has one) before any pod, then its head Service, head pod and `workers` worker pods. Run again on a
        generation whose creation failed part-way, it makes only what is missing; the policy and the Secret, which
        the operator does not watch, are made again (replacing what holds their names: their contents follow from
        the owner and the generation alone), and so is the PodGroup (found already there and the owner's, it is
        kept as it is)."""
        owner = self._owner
        existing = {("Pod", pod.name) for pod in self._seen.pods_of(generation)}
        existing |= {("Service", s.name) for s in self._seen.services if s.generation == generation}
        if ("Pod", naming.head_pod_name(owner.metadata.name, generation, owner.kind)) not in existing:
            self._create(network_policy(owner, generation, self._operator))
            self._create(token_secret(owner, generation))
            if self._gcs is not None:
                self._create(redis_secret(owner, generation))
            group = pod_group(owner, generation)
            if group is not None:
                self._create(group)
        for obj in (head_service(owner, generation), head_pod(owner, generation, self._claim, self._gcs)):
            if (obj["kind"], obj["metadata"]["name"]) not in existing:
                self._create(obj)
        live = len(self._seen.workers(generation))
        self.add_workers(generation, self.free_worker_indexes(generation, workers - live))

    def add_workers(
        self, generation: int, indexes: range | list[int], annotations: list[dict[str, str]] | None = None
    ) -> None:
        """New worker pods at these indexes; the i-th carries annotations[i], when given."""
        for position, index in enumerate(indexes):
            pod = worker_pod(self._owner, generation, index, self._claim, self._gcs)
            if annotations and position < len(annotations):
                pod["metadata"].setdefault("annotations", {}).update(annotations[position])
            self._create(pod)

    @property
    def fault_tolerant(self) -> bool:
        """Whether new clusters are built with GCS fault tolerance."""
        return self._gcs is not None

    def built_fault_tolerant(self, generation: int) -> bool:
        """Whether the generation's pods were built with GCS fault tolerance: its state is in Redis."""
        return any(GCS_FAULT_TOLERANCE_ANNOTATION in pod.annotations for pod in self._seen.pods_of(generation))

    def restart_head(self, generation: int) -> None:
        """A new head pod for a cluster whose head is gone, under the same name: the workers, the head Service and
        the cluster's Secrets and policy stay as they are."""
        self._create(head_pod(self._owner, generation, self._claim, self._gcs))

    def free_worker_indexes(self, generation: int, count: int) -> list[int]:
        """The lowest worker indexes no pod of the generation uses, failed and draining ones included: a replacement
        gets a fresh name, since on a real cluster the old pod's name stays taken while it terminates (for ever on a
        lost node)."""
        taken = {pod.index for pod in self._seen.pods_of(generation) if pod.role == "worker"}
        free = (index for index in range(_MAX_WORKER_INDEX) if index not in taken)
        return list(itertools.islice(free, max(count, 0)))

    def replace_failed_workers(self, workers: list[PodView]) -> list[PodView]:
        """Delete the failed ones among these worker pods, saying so; the caller decides what takes their place."""
        failed = [pod for pod in workers if pod.failed]
        for pod in failed:
            self.remove_pod(pod)
            self.announce_replacement(pod)
        return failed

    def announce_replacement(self, pod: PodView) -> None:
        """The Event and the count of one failed worker pod being replaced."""
        self._plan.event("Warning", "WorkerReplaced", f"worker pod {pod.name} {pod.failure or 'failed'}: replacing it")
        self._plan.count(Outcome.WORKER_REPLACED)

    def remove_pod(self, pod: PodView) -> None:
        self._plan.delete_pods.append(pod.name)
        self._plan.timers.pop(pod.name, None)

    def remove(self, generation: int) -> None:
        """Every pod and the head Service of one generation."""
        for pod in self._seen.pods_of(generation):
            if pod.deleting:
                self._plan.timers.pop(pod.name, None)
            else:
                self.remove_pod(pod)
        self._plan.delete_services += [s.name for s in self._seen.services if s.generation == generation]
        name, kind = self._owner.metadata.name, self._owner.kind
        self._plan.delete_access += [
            ("NetworkPolicy", naming.network_policy_name(name, generation, kind)),
            ("Secret", naming.token_secret_name(name, generation, kind)),
        ]
        if self._gcs is not None or self.built_fault_tolerant(generation):
            self._plan.delete_access.append(("Secret", naming.gcs_redis_secret_name(name, generation, kind)))
        if self._had_pod_group(generation):
            self._plan.delete_access.append(("PodGroup", naming.pod_group_name(name, generation)))

    def _had_pod_group(self, generation: int) -> bool:
        """Whether the generation was built with a Volcano PodGroup: the spec says so, or (when an edit moved the
        job off Volcano, which rebuilds it) its pods still name one."""
        if gang(self._owner) == "volcano":
            return True
        return any(VOLCANO_GROUP_ANNOTATION in pod.annotations for pod in self._seen.pods_of(generation))

    def keep_only(self, *generations: int | None) -> None:
        """Remove every generation but these."""
        for generation in self._seen.generations() - set(generations):
            self.remove(generation)

    def remove_all(self) -> None:
        self.keep_only()

    def _create(self, obj: dict[str, Any]) -> None:
        obj.setdefault("metadata", {}).setdefault("annotations", {}).update(self._stamp)
        self._plan.create.append(obj)
