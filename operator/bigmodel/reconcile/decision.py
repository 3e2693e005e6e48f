"""The frame of every reconcile pass, for either kind: the status being computed, the plan being filled, the verbs
that fill them, and the verdict on an invalid spec."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any, Generic, TypeVar

from bigmodel.api.common import ObservedStatus
from bigmodel.api.job import BigModelJob
from bigmodel.api.service import BigModelService
from bigmodel.builders.gcs_fault_tolerance import GcsFaultTolerance
from bigmodel.builders.network_policy import OperatorPeer
from bigmodel.builders.pod import ClaimMount
from bigmodel.reconcile.cluster import Clusters
from bigmodel.reconcile.conditions import set_condition
from bigmodel.reconcile.observed import ClusterObservation
from bigmodel.reconcile.plans import EventType, Outcome, Plan, RayAction

OwnerT = TypeVar("OwnerT", BigModelJob, BigModelService)
SeenT = TypeVar("SeenT", bound=ClusterObservation)
StatusT = TypeVar("StatusT", bound=ObservedStatus)

VALIDATION_FAILED = "ValidationFailed"


def digest(value: Any) -> str:
    """A short stable digest of a spec part, stamped on pods to tell later which spec built them."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Decision(Generic[OwnerT, SeenT, StatusT]):
    """One pass over one resource. The status starts as a copy of the stored one; `before` keeps the original."""

    def __init__(
        self,
        owner: OwnerT,
        seen: SeenT,
        status: StatusT,
        *,
        claim: ClaimMount | None,
        stamp: dict[str, str],
        timers: dict[str, datetime] | None = None,
        operator: OperatorPeer,
        gcs: GcsFaultTolerance | None = None,
    ) -> None:
        self.owner = owner
        self.seen = seen
        self.now = seen.now
        self.generation = owner.metadata.generation
        self.before = status.model_copy(deep=True)
        self.status = status.model_copy(deep=True)
        self.status.observed_generation = self.generation
        if any(c.type == VALIDATION_FAILED for c in self.status.conditions):
            self.condition(VALIDATION_FAILED, False, "Valid")
        self.plan: Plan[StatusT] = Plan(status=self.status, timers=dict(timers or {}))
        self.clusters = Clusters(owner, seen, self.plan, claim=claim, stamp=stamp, operator=operator, gcs=gcs)

    def event(self, type_: EventType, reason: str, message: str) -> None:
        self.plan.event(type_, reason, message)

    def count(self, outcome: Outcome, times: int = 1) -> None:
        self.plan.count(outcome, times)

    def condition(self, type_: str, truth: bool, reason: str, message: str = "") -> None:
        self.status.conditions = set_condition(
            self.status.conditions,
            type_,
            "True" if truth else "False",
            reason,
            message,
            now=self.now,
            generation=self.generation,
        )

    def had(self, type_: str, reason: str | None = None) -> bool:
        """Whether the stored status had the condition True (with that reason, if given)."""
        return any(
            c.type == type_ and c.status == "True" and reason in (None, c.reason) for c in self.before.conditions
        )

    def finish_pass(self) -> Plan[StatusT]:
        self.plan.deduplicate()
        return self.plan


def validation_plan(status: StatusT, generation: int | None, errors: list[str], now: datetime) -> Plan[StatusT]:
    """An invalid spec: where and why in a condition and one Warning Event, nothing created, no retry until it is
    edited (KubeRay's ValidationFailed)."""
    updated = status.model_copy(deep=True)
    message = "; ".join(errors)
    first_time = not any(
        c.type == VALIDATION_FAILED and c.status == "True" and c.message == message for c in updated.conditions
    )
    updated.observed_generation = generation
    updated.message = f"invalid spec: {message}"
    updated.conditions = set_condition(
        updated.conditions, VALIDATION_FAILED, "True", "InvalidSpec", message, now=now, generation=generation
    )
    plan = Plan(status=updated)
    if first_time:
        plan.event("Warning", VALIDATION_FAILED, message)
    return plan


def deletion_plan(status: StatusT, seen: ClusterObservation, ray: list[RayAction] | None = None) -> Plan[StatusT]:
    """The resource is being deleted: every pod and Service it made goes, after the Ray calls that must come first."""
    plan = Plan(status=status, ray=list(ray or []))
    plan.delete_pods += [pod.name for pod in seen.pods]
    plan.delete_services += [service.name for service in seen.services]
    return plan
