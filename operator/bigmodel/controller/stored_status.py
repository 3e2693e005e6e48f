"""The status stored on a resource, as the operator last wrote it, and the patch that turns it into a new one."""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from bigmodel.api.common import ObservedStatus

log = logging.getLogger(__name__)
StatusT = TypeVar("StatusT", bound=ObservedStatus)


def stored_status(model: type[StatusT], raw: Any) -> StatusT | None:
    """The stored status, or None when it is missing or was edited into something unreadable (it is recomputed)."""
    if not raw:
        return None
    try:
        return model.model_validate(raw, by_alias=True)
    except ValidationError:
        log.warning("ignoring an unreadable %s; recomputing it", model.__name__)
        return None


def status_patch(status: BaseModel, stored: Any) -> dict[str, Any] | None:
    """The merge patch from the stored status to `status`; None when they are the same.

    Compared as the server keeps it: a merge patch deletes the keys it sets to null, so the status is dumped without
    its unset fields, and the patch sets to null exactly the keys that went away.
    """
    new = status.model_dump(by_alias=True, mode="json", exclude_none=True)
    if new == stored:
        return None
    return merge_patch(stored if isinstance(stored, dict) else {}, new)


def merge_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386 the other way round: the patch that makes `old` into `new` (objects merge; lists are replaced)."""
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            inner = merge_patch(before, value)
            if inner:
                patch[key] = inner
        elif value != before:
            patch[key] = value
    return patch
