"""The status stored on a resource, as the operator last wrote it."""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from pydantic import ValidationError

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
