"""A step of a pass that failed (an API call refused, Ray refusing or away), as the resource's status tells it.

A failed step never freezes the status: the pass still writes what it knows, with a `ReconcileFailed` condition that
says which step failed and the API's or Ray's own words, and one Warning Event per distinct problem (not one per
retry). The controller retries with capped exponential backoff; the first pass that goes through clears it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from bigmodel.api.common import ObservedStatus
from bigmodel.reconcile.conditions import set_condition

RECONCILE_FAILED = "ReconcileFailed"
StatusT = TypeVar("StatusT", bound=ObservedStatus)


@dataclass(frozen=True)
class StepFailure:
    step: str
    """What the operator was doing, for a person: `creating pod train-g2-head`."""
    reason: str
    """One CamelCase word for the Event and the condition: Forbidden, Invalid, TooManyRequests, RayRefused..."""
    detail: str
    """The API's or Ray's own message, on one line."""
    retry_after_s: float | None = None
    """How long the server asked the client to wait (429 Retry-After)."""

    @property
    def message(self) -> str:
        return f"{self.step}: {self.detail}"


def one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def with_failure(
    status: StatusT, stored: ObservedStatus | None, failure: StepFailure, now: datetime, generation: int | None
) -> tuple[StatusT, bool]:
    """The status saying the step failed, and whether the failure is news (no stored condition says it already)."""
    news = not any(
        c.type == RECONCILE_FAILED and c.status == "True" and c.message == failure.message
        for c in (stored.conditions if stored else [])
    )
    failed = status.model_copy(deep=True)
    failed.conditions = set_condition(
        failed.conditions, RECONCILE_FAILED, "True", failure.reason, failure.message, now=now, generation=generation
    )
    return failed, news


def without_failure(status: StatusT, now: datetime, generation: int | None) -> StatusT:
    """The status once a pass went through: a ReconcileFailed condition turns False."""
    if not any(c.type == RECONCILE_FAILED and c.status == "True" for c in status.conditions):
        return status
    cleared = status.model_copy(deep=True)
    cleared.conditions = set_condition(
        cleared.conditions, RECONCILE_FAILED, "False", "Reconciled", "", now=now, generation=generation
    )
    return cleared
