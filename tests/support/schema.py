"""Custom resources checked against their CRD's schema as a real API server checks them, and field errors in its words.

:class:`StructuralSchema` does, on every create, update and patch of a custom resource (the object and its status
subresource alike; the server calls :meth:`StructuralSchema.admit`):

* pruning: fields the schema does not know are dropped silently, except under ``x-kubernetes-preserve-unknown-fields``
  or ``additionalProperties: true``; ``apiVersion``, ``kind`` and ``metadata`` are kept as sent at the root; a null
  in a field that is not ``nullable`` and has no default is dropped too;
* structural defaulting: the ``default`` of each absent (or null and not ``nullable``) field is filled in, inside the
  objects that are there (a default never creates its parent);
* validation by ``type`` (``integer`` takes a whole float, ``number`` an integer), ``nullable``, ``enum``,
  ``minimum``/``maximum`` with the boolean ``exclusiveMinimum``/``exclusiveMaximum`` of OpenAPI v3.0,
  ``minLength``/``maxLength``, ``pattern``, ``format: date-time``, ``minItems``/``maxItems``,
  ``minProperties``/``maxProperties``, ``required``, ``properties``, ``additionalProperties``, ``items``,
  ``x-kubernetes-int-or-string``, ``x-kubernetes-list-type`` ``set`` and ``map`` (duplicates), and ``oneOf``/
  ``anyOf``/``allOf`` of value checks (the ``anyOf`` of an int-or-string only restates its types);
* ``x-kubernetes-validations``: each rule's CEL expression, with ``self`` typed by the schema, evaluated by
  ``cel-python`` (``celpy``) wherever its field is present; refused with its ``message`` (else ``failed rule: ...``).
  As on a real server, the rules are not evaluated when a blocking error (type, required, enum, too long, too many)
  was found: a ``<nil>`` cause says so instead;
* validation ratcheting (on by default since Kubernetes 1.30): in an update, a value equal to the old one at the same
  path is not checked again;
* errors as the server words them: :class:`FieldError` is one cause (``reason``, ``field``, message such as
  ``Invalid value: 0: spec.workers.replicas in body should be greater than or equal to 1``, ``Required value``,
  ``Unsupported value: "x": supported values: "a", "b"``), and the server answers a 422 ``Invalid`` ``Status`` with
  them all in ``details.causes``.

What it does not do: no CEL transition rules (``oldSelf``), ``messageExpression``, ``reason``, ``fieldPath`` or
``optionalOldSelf``, and no CEL cost budget; the CEL library is cel-python, whose functions are CEL's standard ones:
Kubernetes' own extensions (``quantity()``, ``url()``, ``isSorted()``, regex ``find``...) are missing. No formats
but ``date-time`` (``int32``, ``byte``, ``uri``... pass unchecked), no ``uniqueItems``, ``multipleOf``, ``not`` or
``x-kubernetes-embedded-resource``, no ``metadata`` pruning or checks (names, labels), no defaulting on read (equal here:
the schema never changes while the server runs), no ratcheting of list items (a changed list is checked whole), and
the order of the causes may differ from a real server's.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import celpy
from celpy import celtypes

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
        return '"null"'  # Kubernetes 1.31 prints a missing value as the string "null"
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


# Structural schemas: what a real server does to a custom resource with its CRD version's openAPIV3Schema.

Schema = Mapping[str, Any]
JsonObject = dict[str, Any]

_MISSING = object()
"""No old value at this path: a create, or a field the old object lacked."""
ROOT_FIELDS = ("apiVersion", "kind", "metadata")
"""Kept as sent at the root, never pruned or validated by the schema (the server checks metadata on its own)."""
BLOCKING = {
    "FieldValueNotSupported",
    "FieldValueRequired",
    "FieldValueTooLong",
    "FieldValueTooMany",
    "FieldValueTypeInvalid",
}
"""Schema errors after which the server does not evaluate the CEL rules (apiextensions' hasBlockingErr)."""
RULES_UNCHECKED = FieldError(
    "FieldValueInvalid",
    "<nil>",
    None,
    "some validation rules were not checked because the object was invalid; correct the existing errors to complete "
    "validation",
)
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_JSON_TYPES: tuple[tuple[str, type], ...] = (
    ("boolean", bool),
    ("integer", int),
    ("number", float),
    ("string", str),
    ("array", list),
    ("object", dict),
)

# celpy logs each evaluation step at DEBUG, which Kopf's --verbose turns on for the whole test process.
logging.getLogger("celpy").setLevel(logging.WARNING)
_CEL = celpy.Environment()


class StructuralSchema:
    """One CRD version's schema, applied to a custom resource as the API server applies it (see ``admit``)."""

    def __init__(self, schema: Schema) -> None:
        self._schema = schema

    def admit(self, obj: JsonObject, old: JsonObject | None = None) -> tuple[JsonObject, list[FieldError]]:
        """The object as the server stores it (unknown fields pruned, non-nullable nulls without a default pruned,
        defaults filled in) and what is invalid in it; with `old` (an update), unchanged values are not checked
        again (validation ratcheting, on by default since Kubernetes 1.30)."""
        body = {key: value for key, value in obj.items() if key not in ROOT_FIELDS}
        body = prune(body, self._schema)
        apply_defaults(body, self._schema)
        before: Any = _MISSING if old is None else {k: v for k, v in old.items() if k not in ROOT_FIELDS}
        errors = check(body, self._schema, "", before)
        if any(error.reason in BLOCKING for error in errors):
            errors.append(RULES_UNCHECKED)
        else:
            errors += check_rules(body, self._schema, "", before)
        return {**{key: obj[key] for key in ROOT_FIELDS if key in obj}, **body}, errors


def _child(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _properties(schema: Schema) -> Mapping[str, Schema]:
    return schema.get("properties") or {}


def _extra(schema: Schema) -> Schema | None:
    """The schema of the keys that ``properties`` does not name, if there is one."""
    extra = schema.get("additionalProperties")
    return extra if isinstance(extra, Mapping) else None


def _field_schema(schema: Schema, key: str) -> Schema | None:
    properties = _properties(schema)
    return properties[key] if key in properties else _extra(schema)


def prune(value: Any, schema: Schema | None) -> Any:
    """A copy without the fields the schema does not know (kept under ``x-kubernetes-preserve-unknown-fields``), and
    without the nulls of non-nullable fields that have no default (defaulting replaces those that have one)."""
    if schema is None:
        return value
    if isinstance(value, list):
        return [prune(item, schema.get("items")) for item in value]
    if not isinstance(value, dict):
        return value
    kept: JsonObject = {}
    for key, item in value.items():
        field = _field_schema(schema, key)
        if field is None and not (
            schema.get("x-kubernetes-preserve-unknown-fields") or schema.get("additionalProperties") is True
        ):
            continue
        if item is None and field is not None and not field.get("nullable") and "default" not in field:
            continue
        kept[key] = prune(item, field)
    return kept


def apply_defaults(value: Any, schema: Schema | None) -> None:
    """Fill in, in place, the ``default`` of every absent (or null and non-nullable) field whose parent is there."""
    if schema is None:
        return
    if isinstance(value, list):
        items = schema.get("items")
        for index, item in enumerate(value):
            if item is None and items is not None and "default" in items and not items.get("nullable"):
                value[index] = copy.deepcopy(items["default"])
            apply_defaults(value[index], items)
    elif isinstance(value, dict):
        for key, field in _properties(schema).items():
            if "default" in field and (key not in value or (value[key] is None and not field.get("nullable"))):
                value[key] = copy.deepcopy(field["default"])
        for key, item in value.items():
            apply_defaults(item, _field_schema(schema, key))


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return next(name for name, kind in _JSON_TYPES if isinstance(value, kind))


def _has_type(value: Any, expected: str) -> bool:
    actual = _type_name(value)
    return (
        actual == expected
        or (expected == "number" and actual == "integer")
        or (expected == "integer" and actual == "number" and float(value).is_integer())
    )


def _number(bound: float) -> str:
    """A schema bound as Go prints a float64: 1.0 is ``1``."""
    return str(int(bound)) if float(bound).is_integer() else repr(bound)


def check(value: Any, schema: Schema, path: str, old: Any = _MISSING) -> list[FieldError]:
    """What is invalid in `value` by the schema's OpenAPI keywords (not its CEL rules), as field errors."""
    if value == old:
        return []  # ratcheting: an unchanged value stays valid
    expected = "integer,string" if schema.get("x-kubernetes-int-or-string") else schema.get("type")
    if value is None and (schema.get("nullable") or expected is None):
        return []
    errors = _check_enum(value, schema, path)
    if expected is not None and not any(_has_type(value, kind) for kind in expected.split(",")):
        actual = _type_name(value)
        return [
            FieldError("FieldValueTypeInvalid", path, actual, f'{path} in body must be of type {expected}: "{actual}"'),
            *errors,
        ]
    if isinstance(value, str):
        errors += _check_string(value, schema, path)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        errors += _check_number(value, schema, path)
    elif isinstance(value, list):
        errors += _check_array(value, schema, path)
    elif isinstance(value, dict):
        errors += _check_object(value, schema, path, old if isinstance(old, dict) else {})
    return errors + _check_alternatives(value, schema, path)


def _check_enum(value: Any, schema: Schema, path: str) -> list[FieldError]:
    allowed = schema.get("enum")
    if allowed is None or value in allowed:
        return []
    listed = ", ".join(json.dumps(item if isinstance(item, str) else json.dumps(item)) for item in allowed)
    return [FieldError("FieldValueNotSupported", path, value, f"supported values: {listed}")]


def _check_string(value: str, schema: Schema, path: str) -> list[FieldError]:
    errors = []
    if "minLength" in schema and len(value) < schema["minLength"]:
        errors.append(
            FieldError(
                "FieldValueInvalid", path, value, f"{path} in body should be at least {schema['minLength']} chars long"
            )
        )
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        errors.append(FieldError("FieldValueTooLong", path, detail=f"may not be more than {schema['maxLength']} bytes"))
    if "pattern" in schema and not re.search(schema["pattern"], value):
        errors.append(
            FieldError("FieldValueInvalid", path, value, f"{path} in body should match '{schema['pattern']}'")
        )
    if schema.get("format") == "date-time" and not _DATE_TIME.match(value):
        errors.append(
            FieldError("FieldValueInvalid", path, value, f'{path} in body must be of type date-time: "{value}"')
        )
    return errors


def _check_number(value: float, schema: Schema, path: str) -> list[FieldError]:
    errors = []
    if "minimum" in schema:
        exclusive, bound = schema.get("exclusiveMinimum") is True, schema["minimum"]
        if value < bound or (exclusive and value == bound):
            words = "greater than" if exclusive else "greater than or equal to"
            errors.append(
                FieldError("FieldValueInvalid", path, value, f"{path} in body should be {words} {_number(bound)}")
            )
    if "maximum" in schema:
        exclusive, bound = schema.get("exclusiveMaximum") is True, schema["maximum"]
        if value > bound or (exclusive and value == bound):
            words = "less than" if exclusive else "less than or equal to"
            errors.append(
                FieldError("FieldValueInvalid", path, value, f"{path} in body should be {words} {_number(bound)}")
            )
    return errors


def _check_array(value: list[Any], schema: Schema, path: str) -> list[FieldError]:
    errors = []
    if "minItems" in schema and len(value) < schema["minItems"]:
        errors.append(
            FieldError(
                "FieldValueInvalid", path, len(value), f"{path} in body should have at least {schema['minItems']} items"
            )
        )
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        errors.append(
            FieldError("FieldValueTooMany", path, len(value), f"must have at most {schema['maxItems']} items")
        )
    items = schema.get("items")
    for index, item in enumerate(value):
        if items is not None:
            errors += check(item, items, f"{path}[{index}]")  # items are not correlated with the old list's
    return errors + _check_duplicates(value, schema, path)


def _check_duplicates(value: list[Any], schema: Schema, path: str) -> list[FieldError]:
    """``x-kubernetes-list-type``: ``set`` items and ``map`` items' keys must be unique."""
    kind, keys = schema.get("x-kubernetes-list-type"), schema.get("x-kubernetes-list-map-keys") or []
    if kind not in ("set", "map"):
        return []
    seen: list[Any] = []
    errors = []
    for index, item in enumerate(value):
        key = {name: item.get(name) for name in keys} if kind == "map" and isinstance(item, dict) else item
        if key in seen:
            errors.append(FieldError("FieldValueDuplicate", f"{path}[{index}]", key))
        seen.append(key)
    return errors


def _check_object(value: JsonObject, schema: Schema, path: str, old: JsonObject) -> list[FieldError]:
    errors = [
        FieldError("FieldValueRequired", _child(path, name))
        for name in schema.get("required") or []
        if name not in value
    ]
    if "minProperties" in schema and len(value) < schema["minProperties"]:
        errors.append(
            FieldError(
                "FieldValueInvalid",
                path,
                len(value),
                f"{path} in body should have at least {schema['minProperties']} properties",
            )
        )
    if "maxProperties" in schema and len(value) > schema["maxProperties"]:
        errors.append(
            FieldError("FieldValueTooMany", path, len(value), f"must have at most {schema['maxProperties']} items")
        )
    for key, item in value.items():
        field = _field_schema(schema, key)
        if field is not None:
            errors += check(item, field, _child(path, key), old.get(key, _MISSING))
    return errors


def _check_alternatives(value: Any, schema: Schema, path: str) -> list[FieldError]:
    """``oneOf``, ``anyOf`` and ``allOf`` (in a structural schema: value checks without types, such as ``required``);
    the ``anyOf`` of an int-or-string only restates its types."""
    errors = []
    for part in schema.get("allOf") or []:
        errors += check(value, part, path)
    valid = [not check(value, part, path) for part in schema.get("oneOf") or []]
    if valid and valid.count(True) != 1:
        errors.append(
            FieldError(
                "FieldValueInvalid",
                path,
                _type_name(value),
                f"{path} in body must validate one and only one schema (oneOf)",
            )
        )
    alternatives = schema.get("anyOf") or []
    if (
        alternatives
        and not schema.get("x-kubernetes-int-or-string")
        and all(check(value, p, path) for p in alternatives)
    ):
        errors.append(
            FieldError(
                "FieldValueInvalid",
                path,
                _type_name(value),
                f"{path} in body must validate at least one schema (anyOf)",
            )
        )
    return errors


def check_rules(value: Any, schema: Schema, path: str, old: Any = _MISSING) -> list[FieldError]:
    """What the schema's ``x-kubernetes-validations`` CEL rules refuse in `value` (unchanged values skipped)."""
    if value is None or value == old:
        return []
    errors = [
        error
        for rule in schema.get("x-kubernetes-validations") or []
        if (error := _evaluate(rule, value, schema, path)) is not None
    ]
    if isinstance(value, list) and schema.get("items") is not None:
        for index, item in enumerate(value):
            errors += check_rules(item, schema["items"], f"{path}[{index}]")
    elif isinstance(value, dict):
        before = old if isinstance(old, dict) else {}
        for key, item in value.items():
            field = _field_schema(schema, key)
            if field is not None:
                errors += check_rules(item, field, _child(path, key), before.get(key, _MISSING))
    return errors


@functools.cache
def _program(rule: str) -> celpy.Runner:
    return _CEL.program(_CEL.compile(rule))


def _evaluate(rule: Mapping[str, Any], value: Any, schema: Schema, path: str) -> FieldError | None:
    """The error of one CEL rule on `value`, as the server words it; None when the rule holds."""
    kind = "integer,string" if schema.get("x-kubernetes-int-or-string") else schema.get("type", "object")
    try:
        holds = _program(rule["rule"]).evaluate({"self": _to_cel(value, schema)}) == celtypes.BoolType(True)
    except celpy.CELEvalError as error:
        return FieldError("FieldValueInvalid", path, kind, f"{error.args[0]} evaluating rule: {rule['rule']}")
    return (
        None
        if holds
        else FieldError("FieldValueInvalid", path, kind, rule.get("message") or f"failed rule: {rule['rule']}")
    )


def _to_cel(value: Any, schema: Schema | None) -> Any:
    """A JSON value as CEL sees it, typed by its schema (an ``integer`` is a CEL int, a ``number`` a double)."""
    if schema is None:
        return celpy.json_to_cel(value)
    if isinstance(value, dict):
        return celtypes.MapType(
            {celtypes.StringType(key): _to_cel(item, _field_schema(schema, key)) for key, item in value.items()}
        )
    if isinstance(value, list):
        return celtypes.ListType([_to_cel(item, schema.get("items")) for item in value])
    if schema.get("type") == "number" and not isinstance(value, bool):
        return celtypes.DoubleType(value)
    return celpy.json_to_cel(value)
