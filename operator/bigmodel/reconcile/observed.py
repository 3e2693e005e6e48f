"""What the operator sees of a resource's Ray clusters, reduced from raw API objects to the facts decisions need.

The same for both kinds: pods and head Services, each with the cluster generation it belongs to. What each kind sees
of Ray itself is in job_observed.py and service_observed.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bigmodel.api.wire import GENERATION_LABEL, ROLE_LABEL, WORKER_INDEX_LABEL

# Why a container cannot start, as the kubelet says it: waiting reasons that do not pass by themselves.
STUCK_WAITING_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
        "CrashLoopBackOff",
    }
)


@dataclass(frozen=True)
class RayHead:
    """A cluster's Ray head as the operator calls it: where it answers, and the cluster whose token it takes."""

    ip: str
    owner_uid: str
    generation: int


@dataclass(frozen=True)
class PodView:
    name: str
    generation: int
    role: str
    index: int | None
    phase: str
    ready: bool
    deleting: bool
    pod_ip: str | None
    failure: str
    annotations: dict[str, str] = field(default_factory=dict)
    stuck: str = ""
    """Why the pod cannot start, in the scheduler's or the kubelet's words (`Unschedulable: 0/3 nodes ...`)."""
    created: datetime | None = None
    disruption: str = ""
    """Why the cluster is taking the pod away, when it says so in the DisruptionTarget condition (its reason:
    EvictionByEvictionAPI for a drain, PreemptionByScheduler, DeletionByTaintManager, TerminationByKubelet)."""
    owner_uid: str = ""
    """The uid of the resource that controls the pod (its owner reference)."""
    gates: tuple[str, ...] = ()
    """The scheduling gates holding the pod back (Kueue's until its group is admitted): no scheduler looks at it yet."""

    @property
    def failed(self) -> bool:
        return self.phase in ("Failed", "Succeeded")

    @property
    def running(self) -> bool:
        """Its container runs and it has an IP: its processes may be called, ready or not."""
        return self.phase == "Running" and bool(self.pod_ip)

    @classmethod
    def from_object(cls, pod: dict[str, Any]) -> PodView:
        meta = pod.get("metadata", {})
        labels = meta.get("labels") or {}
        status = pod.get("status") or {}
        conditions = status.get("conditions") or []
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
        index = labels.get(WORKER_INDEX_LABEL)
        return cls(
            name=meta["name"],
            generation=int(labels.get(GENERATION_LABEL, "0")),
            role=labels.get(ROLE_LABEL, ""),
            index=int(index) if index is not None else None,
            phase=status.get("phase", "Pending"),
            ready=ready,
            deleting=bool(meta.get("deletionTimestamp")),
            pod_ip=status.get("podIP"),
            failure=_failure(status),
            annotations=dict(meta.get("annotations") or {}),
            stuck=_stuck(status),
            created=datetime.fromisoformat(meta["creationTimestamp"]) if meta.get("creationTimestamp") else None,
            disruption=next(
                (
                    c.get("reason") or "DisruptionTarget"
                    for c in conditions
                    if c.get("type") == "DisruptionTarget" and c.get("status") == "True"
                ),
                "",
            ),
            owner_uid=next(
                (ref.get("uid", "") for ref in meta.get("ownerReferences") or [] if ref.get("controller")), ""
            ),
            gates=tuple(gate.get("name", "") for gate in (pod.get("spec") or {}).get("schedulingGates") or []),
        )

    @property
    def ray_head(self) -> RayHead:
        """This pod as the head the operator calls; only meaningful once it has an IP."""
        return RayHead(self.pod_ip or "", self.owner_uid, self.generation)


def _failure(status: dict[str, Any]) -> str:
    """Why a pod's container stopped, in the words kubectl describe would use."""
    for container in status.get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated")
        if terminated:
            reason = terminated.get("reason") or "Error"
            return f"{reason} (exit code {terminated.get('exitCode')})"
    return status.get("reason") or status.get("message") or ""


def _stuck(status: dict[str, Any]) -> str:
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("reason") == "Unschedulable":
            return f"Unschedulable: {condition.get('message') or 'no node fits'}"
    for container in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in STUCK_WAITING_REASONS:
            return f"{waiting['reason']}: {waiting.get('message') or container.get('image', '')}".rstrip(": ")
    return ""


def owned_by(obj: dict[str, Any], uid: str) -> bool:
    """Whether the object names this owner uid among its owner references: labels alone are not proof, since
    anyone who may create a pod may give it any labels."""
    return any(ref.get("uid") == uid for ref in obj.get("metadata", {}).get("ownerReferences") or [])


@dataclass(frozen=True)
class Children:
    """What the loop lists of one resource: its own pods and Services, and the generations whose names objects of
    an earlier resource of the same name still hold (a deleted job's pods, still Terminating)."""

    pods: list[PodView]
    services: list[dict[str, Any]]
    foreign_generations: frozenset[int] = frozenset()


@dataclass(frozen=True)
class ServiceView:
    """A cluster's head Service."""

    name: str
    generation: int

    @classmethod
    def from_object(cls, service: dict[str, Any]) -> ServiceView:
        meta = service.get("metadata", {})
        return cls(meta["name"], int((meta.get("labels") or {}).get(GENERATION_LABEL, "0")))


@dataclass(frozen=True, kw_only=True)
class ClusterObservation:
    """Everything a pass sees of one resource's Ray clusters, of every generation, at `now`."""

    now: datetime
    pods: list[PodView] = field(default_factory=list)
    services: list[ServiceView] = field(default_factory=list)
    foreign_generations: frozenset[int] = frozenset()
    """Generations whose names are held by objects that are not this resource's: never used, never touched."""

    def pods_of(self, generation: int) -> list[PodView]:
        return [pod for pod in self.pods if pod.generation == generation]

    def head(self, generation: int) -> PodView | None:
        return next((p for p in self.pods_of(generation) if p.role == "head" and not p.deleting), None)

    def workers(self, generation: int) -> list[PodView]:
        """The worker pods not being deleted, by index."""
        found = [p for p in self.pods_of(generation) if p.role == "worker" and not p.deleting]
        return sorted(found, key=lambda pod: pod.index if pod.index is not None else -1)

    def generations(self) -> set[int]:
        return {pod.generation for pod in self.pods} | {service.generation for service in self.services}

    def newest_built(self, after: int, *skip: int | None) -> int:
        """The newest generation after `after` whose head pod exists (built by a pass whose status write was lost),
        leaving out `skip`; `after` itself when there is none."""
        built = [g for g in self.generations() if g > after and g not in skip and self.head(g) is not None]
        return max(built, default=after)

    def gated(self, generation: int) -> list[PodView]:
        """The generation's pods still held by a scheduling gate: waiting for admission by a queue."""
        return [pod for pod in self.pods_of(generation) if pod.gates and not pod.deleting]

    def stuck(self, generation: int) -> list[PodView]:
        """The generation's pods that cannot start, and will not without someone's help."""
        return [pod for pod in self.pods_of(generation) if pod.stuck and not pod.deleting]
