"""What the operator sees of a BigModelService: its pods, its Services, the model source and each cluster's Serve."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bigmodel.api.traffic import TrafficReport
from bigmodel.api.wire import GENERATION_LABEL
from bigmodel.reconcile.observed import ClusterObservation

Demand = tuple[tuple[tuple[tuple[str, float], ...], int], ...]
"""Resource shapes Ray could not place, with how many of each: (((resource, amount), ...), count)."""


FAILED_APP_STATES = ("DEPLOY_FAILED", "UNHEALTHY")
"""Serve application states that waiting will not mend."""


@dataclass(frozen=True)
class ServeAppView:
    """One Serve application as Ray's Serve REST API reports it."""

    status: str
    message: str = ""
    deployed: dict[str, Any] = field(default_factory=dict)
    target_replicas: int = 0
    replica_states: tuple[str, ...] = ()

    @property
    def running_replicas(self) -> int:
        return self.replica_states.count("RUNNING")

    def runs(self, desired: dict[str, Any]) -> bool:
        """Whether the application was deployed from `desired`; Ray may echo it back with its defaults added."""
        return _contains(self.deployed, desired)


def _contains(actual: Any, wanted: Any) -> bool:
    """Every key of `wanted` is in `actual` with a value that contains the wanted one, recursively."""
    if isinstance(wanted, dict):
        return isinstance(actual, dict) and all(_contains(actual.get(k), v) for k, v in wanted.items())
    if isinstance(wanted, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(wanted)
            and all(_contains(a, w) for a, w in zip(actual, wanted, strict=True))
        )
    return bool(actual == wanted)


@dataclass(frozen=True)
class RayClusterView:
    """One generation's Ray, as seen through its head; `reachable` False when the head did not answer."""

    reachable: bool
    app: ServeAppView | None = None
    nodes: frozenset[str] = frozenset()
    """Names of the Ray nodes that are alive: the pods that joined the cluster."""
    busy: frozenset[str] = frozenset()
    """Nodes where something (a Serve replica) holds CPUs or GPUs."""
    demand: Demand = ()
    """What Ray's scheduler is waiting to place for lack of room: the replicas more worker pods would take."""
    canary: ServeAppView | None = None
    """The canary application (<service>-canary), while there is one."""


@dataclass(frozen=True)
class ServingServiceView:
    name: str
    generation: int | None

    @classmethod
    def from_object(cls, service: dict[str, Any]) -> ServingServiceView:
        selected = ((service.get("spec") or {}).get("selector") or {}).get(GENERATION_LABEL)
        return cls(service["metadata"]["name"], int(selected) if selected is not None else None)


@dataclass(frozen=True)
class ModelSourceView:
    """Where the model is, once it is there to serve."""

    uri: str
    revision: str = ""
    """Changes when the same uri holds a new model: the source job's uid and completion time."""
    claim: tuple[str, str] | None = None
    """(claim name, mount path) of the volume that holds the model, if it is on one."""


@dataclass(frozen=True)
class SourceProblem:
    """Why there is nothing to serve yet (or no longer)."""

    reason: str
    message: str
    final: bool = False
    """True when waiting will not help (the source job failed)."""


@dataclass(frozen=True, kw_only=True)
class ServiceObservation(ClusterObservation):
    """Everything observed about one BigModelService in one pass: its clusters, where its model is, and each
    cluster's Ray as seen through that cluster's head."""

    source: ModelSourceView | SourceProblem
    serving: ServingServiceView | None = None
    ray: dict[int, RayClusterView] = field(default_factory=dict)
    traffic: TrafficReport | None = None
    """During a canary: the split the serving cluster's proxies apply and what each version answered through them;
    None while the head's proxy does not answer."""

    def cluster(self, generation: int) -> RayClusterView:
        return self.ray.get(generation, RayClusterView(reachable=False))
