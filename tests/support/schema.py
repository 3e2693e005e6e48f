"""Field errors in a real API server's words: the causes of a 422 Invalid answer."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

_OMITTED = object()
"""A FieldError without a value: Required, Forbidden and Too long never print one."""

LABELS = {
    "FieldValueInvalid": "Invalid value",
    "FieldValueTypeInvalid": "Invalid value",
    "FieldValueRequired": "Required value",
    "FieldValueNotSupported": "Unsupported value",
    "FieldValueForbidden": "Forbidden",
    "FieldValueTooLong": "Too long",
    "FieldValueTooMany": "Too many",
    "FieldValueDuplicate": "Duplicate value",
}
"""Each cause reason and how Kubernetes' ``field.Error`` starts its message."""


def go_value(value: Any) -> str:
    """A value as ``field.Error`` prints it: strings quoted, numbers and booleans bare, null as ``null``."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):  # Go's %#v of a map[string]interface{}, as a Duplicate value shows a list-map key
        return "map[string]interface {}{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in value.items()) + "}"
    return str(value)


@dataclass(frozen=True)
class FieldError:
    """One cause of a 422 Invalid: its reason (``FieldValueInvalid``...), field path, bad value and detail."""

    reason: str
    field: str
    value: Any = _OMITTED
    detail: str = ""

    def body(self) -> str:
        """The cause's message: ``Invalid value: 0: spec.x in body should be ...``, ``Required value``."""
        text = LABELS[self.reason]
        if self.value is not _OMITTED:
            text += f": {go_value(self.value)}"
        return f"{text}: {self.detail}" if self.detail else text

    def __str__(self) -> str:
        return f"{self.field}: {self.body()}"
