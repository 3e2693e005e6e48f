"""Standard Kubernetes conditions, changed the way kubectl users expect: the transition time moves only on a flip."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from bigmodel.api.common import Condition

Truth = Literal["True", "False", "Unknown"]


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: Truth,
    reason: str,
    message: str,
    *,
    now: datetime,
    generation: int | None,
) -> list[Condition]:
    """The conditions with `type_` set; lastTransitionTime kept unless the status itself changes."""
    previous = next((c for c in conditions if c.type == type_), None)
    changed_at = previous.last_transition_time if previous is not None and previous.status == status else now
    updated = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=changed_at,
        observed_generation=generation,
    )
    others = [c for c in conditions if c.type != type_]
    position = conditions.index(previous) if previous is not None else len(others)
    return others[:position] + [updated] + others[position:]
