"""What one reconcile pass decides, for either kind: changes to child objects and to Ray, Events, counts, status.

The controller carries a plan out in one fixed order (deletions, creations, Ray calls, Service patches, Events, then
the status), so a decision only says what, never how.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, Generic, Literal, TypeVar

from bigmodel.api.common import ObservedStatus
from bigmodel.api.traffic import TrafficSetting
from bigmodel.reconcile.observed import RayHead

EventType = Literal["Normal", "Warning"]
StatusT = TypeVar("StatusT", bound=ObservedStatus)
ActionT = TypeVar("ActionT")


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event about the resource: for people, so its words may change."""

    type: EventType
    reason: str
    message: str


class Outcome(str, Enum):
    """What a pass did that the operator's metrics count. Metrics follow these, not the words of Events."""

    RESTARTED = "restarted"
    """A job's Ray cluster was rebuilt after a failure (counted against maxRestarts)."""
    WORKER_REPLACED = "worker_replaced"
    WORKER_ADDED = "worker_added"
    WORKER_REMOVED = "worker_removed"
    HEAD_RESTARTED = "head_restarted"
    """A service's lost Ray head was re-created in place (GCS fault tolerance), its cluster kept."""
    UPGRADE_COMPLETE = "upgrade_complete"
    UPGRADE_FAILED = "upgrade_failed"
    CANARY_PROMOTED = "canary_promoted"
    CANARY_ROLLED_BACK = "canary_rolled_back"


@dataclass(frozen=True)
class SubmitJob:
    """Submit a Ray job (the Job Submission API's POST body) to the head."""

    head: RayHead
    submission: dict[str, Any]


@dataclass(frozen=True)
class StopJob:
    head: RayHead
    submission_id: str


@dataclass(frozen=True)
class DeployServe:
    """Declare a cluster's Serve applications (Serve's REST API PUT body) on the head."""

    head: RayHead
    config: dict[str, Any]


@dataclass(frozen=True)
class SetTraffic:
    """Set the canary's share of the requests on every Serve proxy of the cluster, through the head's."""

    head: RayHead
    setting: TrafficSetting


RayAction = SubmitJob | StopJob | DeployServe | SetTraffic


@dataclass(kw_only=True)
class Plan(Generic[StatusT]):
    """What to do for one resource, in the order the controller does it, and the status to write last."""

    status: StatusT
    delete_pods: list[str] = field(default_factory=list)
    delete_services: list[str] = field(default_factory=list)
    delete_access: list[tuple[str, str]] = field(default_factory=list)
    """A removed cluster's NetworkPolicy, token Secret and Volcano PodGroup, as (kind, name): the operator does not
    watch them, so they are deleted by name (a 404 is fine)."""
    create: list[dict[str, Any]] = field(default_factory=list)
    ray: list[RayAction] = field(default_factory=list)
    patch_services: dict[str, dict[str, Any]] = field(default_factory=dict)
    """JSON merge patches of Services, by name (a serving Service's selector moving to another cluster)."""
    events: list[Event] = field(default_factory=list)
    outcomes: Counter[Outcome] = field(default_factory=Counter)
    timers: dict[str, datetime] = field(default_factory=dict)
    """Moments the decision remembers between passes, in memory only (when each worker pod became idle)."""
    delete_owner: bool = False
    """Delete the resource itself (a finished job past its ttlSecondsAfterFinished)."""
    requeue_after: float | None = None
    """Seconds until the next pass if nothing wakes it sooner; None: only when something changes."""
    status_on_failure: StatusT | None = None
    """The status to write when a step of the plan fails, if not `status`: without the counts that only the
    objects this plan makes can vouch for (the next pass reads those back from the objects, or counts again)."""

    def event(self, type_: EventType, reason: str, message: str) -> None:
        self.events.append(Event(type_, reason, message))

    def count(self, outcome: Outcome, times: int = 1) -> None:
        self.outcomes[outcome] += times

    def ray_calls(self, kind: type[ActionT]) -> list[ActionT]:
        """The Ray actions of one type, in order."""
        return [action for action in self.ray if isinstance(action, kind)]

    def deduplicate(self) -> None:
        """Several verbs of one pass may remove the same pod; each is deleted once."""
        self.delete_pods = list(dict.fromkeys(self.delete_pods))
        self.delete_services = list(dict.fromkeys(self.delete_services))
        self.delete_access = list(dict.fromkeys(self.delete_access))
