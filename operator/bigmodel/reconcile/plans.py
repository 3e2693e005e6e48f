"""Parts every plan shares: Events to post, digests of spec parts, and the invalid-spec verdict."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeVar

from bigmodel.api.common import ObservedStatus
from bigmodel.reconcile.conditions import set_condition

EventType = Literal["Normal", "Warning"]
StatusT = TypeVar("StatusT", bound=ObservedStatus)


@dataclass(frozen=True)
class Event:
    type: EventType
    reason: str
    message: str


@dataclass(kw_only=True)
class ChildChanges:
    """What a plan does to its resource's pods and Services, the Events that say why, and when to look again."""

    create: list[dict[str, Any]] = field(default_factory=list)
    delete_pods: list[str] = field(default_factory=list)
    delete_services: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None


class Decision:
    """The verbs one reconcile pass uses to fill its plan; subclasses set these four attributes first."""

    now: datetime
    generation: int | None
    status: ObservedStatus
    plan: ChildChanges

    def event(self, type_: EventType, reason: str, message: str) -> None:
        self.plan.events.append(Event(type_, reason, message))

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


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def annotated(obj: dict[str, Any], annotations: dict[str, str]) -> dict[str, Any]:
    obj.setdefault("metadata", {}).setdefault("annotations", {}).update(annotations)
    return obj


def invalid_status(status: StatusT, generation: int | None, errors: list[str], now: datetime) -> tuple[StatusT, bool]:
    """The status of an invalid spec (where and why, in a condition), and whether this verdict is new."""
    updated = status.model_copy(deep=True)
    message = "; ".join(errors)
    first_time = not any(
        c.type == "ValidationFailed" and c.status == "True" and c.message == message for c in updated.conditions
    )
    updated.observed_generation = generation
    updated.message = f"invalid spec: {message}"
    updated.conditions = set_condition(
        updated.conditions, "ValidationFailed", "True", "InvalidSpec", message, now=now, generation=generation
    )
    return updated, first_time


def clear_validation(status: ObservedStatus, generation: int | None, now: datetime) -> None:
    if any(c.type == "ValidationFailed" for c in status.conditions):
        status.conditions = set_condition(
            status.conditions, "ValidationFailed", "False", "Valid", "", now=now, generation=generation
        )
