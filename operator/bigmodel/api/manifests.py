"""Reading manifests: YAML file -> BigModelJob or BigModelService, with errors that name the field the user wrote.

The CLI and the operator share these checks, so `bigmodel train job.yaml` refuses exactly what a ValidationFailed
condition would report in the cluster, in the same words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic.alias_generators import to_camel
from pydantic_core import ErrorDetails

from bigmodel.api.job import BigModelJob
from bigmodel.api.service import BigModelService
from bigmodel.api.wire import API_VERSION

Resource = BigModelJob | BigModelService
MODELS_BY_KIND: dict[str, type[BigModelJob] | type[BigModelService]] = {
    "BigModelJob": BigModelJob,
    "BigModelService": BigModelService,
}

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_SHOWN_INPUT = 60


@dataclass(frozen=True)
class FieldError:
    """One problem in a manifest: where (dotted wire path, '' for the whole file) and why."""

    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}" if self.field else self.reason


class ManifestError(Exception):
    """A manifest that cannot be used. str() is one line: `<file>: <field>: <reason>`."""

    def __init__(self, source: str, errors: list[FieldError]) -> None:
        if not errors:
            raise ValueError("a ManifestError needs at least one error")
        self.source = source
        self.errors = errors
        self.field = errors[0].field
        self.reason = errors[0].reason
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(f"{source}: {errors[0]}{more}")


def _segment(part: str | int) -> str:
    if isinstance(part, int):
        return f"[{part}]"
    if _IDENTIFIER.match(part):
        return f".{part}"
    return f'["{part}"]'


def format_path(parts: list[str | int]) -> str:
    """`spec.workers.tolerations[0].effect`; keys that are not identifiers are quoted: `nodeSelector["a.io/b"]`."""
    return "".join(_segment(part) for part in parts).lstrip(".")


def _wire_path(loc: tuple[str | int, ...], data: Any) -> list[str | int]:
    """The part of pydantic's error location that exists in the user's document.

    pydantic inserts the names of union members and markers such as '[key]' into locations; walking the input
    keeps only the keys and indexes the user actually wrote, plus a final missing key.
    """
    path: list[str | int] = []
    current = data
    for position, part in enumerate(loc):
        if isinstance(current, dict) and part in current:
            path.append(part)
            current = current[part]
        elif isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current):
            path.append(part)
            current = current[part]
        elif isinstance(current, dict) and isinstance(part, str) and position == len(loc) - 1:
            path.append(part)
    return path


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN_INPUT else text[: _SHOWN_INPUT - 3] + "..."


def _reason(error: ErrorDetails) -> str:
    kind = error["type"]
    ctx = error.get("ctx", {})
    value = error.get("input")
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        name = str(error["loc"][-1])
        camel = to_camel(name)
        hint = f" (fields are camelCase: did you mean {camel!r}?)" if camel != name else ""
        return f"unknown field{hint}"
    if kind == "literal_error":
        return f"must be {ctx['expected']}, not {_shown(value)}"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"must be a whole number, not {_shown(value)}"
    if kind in ("float_parsing", "float_type"):
        return f"must be a number, not {_shown(value)}"
    if kind in ("bool_parsing", "bool_type"):
        return f"must be true or false, not {_shown(value)}"
    if kind == "string_type":
        return f"must be a string, not {_shown(value)} (quote it)"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a mapping of fields, not {_shown(value)}"
    if kind == "list_type":
        return f"must be a list, not {_shown(value)}"
    bounds = {
        "greater_than_equal": (">=", "ge"),
        "greater_than": (">", "gt"),
        "less_than_equal": ("<=", "le"),
        "less_than": ("<", "lt"),
    }
    if kind in bounds:
        sign, key = bounds[kind]
        return f"must be {sign} {ctx[key]}, not {_shown(value)}"
    if kind == "string_too_short":
        return "must not be empty" if ctx["min_length"] == 1 else f"must be at least {ctx['min_length']} characters"
    if kind == "string_too_long":
        return f"must be at most {ctx['max_length']} characters"
    if kind == "string_pattern_mismatch":
        return f"{_shown(value)} does not match the pattern {ctx['pattern']}"
    if kind == "too_short":
        return f"must have at least {ctx['min_length']} item(s)"
    if kind == "too_long":
        return f"must have at most {ctx['max_length']} item(s)"
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", error["msg"]))
    return error["msg"].replace("Input should be", "must be")


def _from_validation_error(exc: ValidationError, data: dict[str, Any]) -> list[FieldError]:
    errors: list[FieldError] = []
    for error in exc.errors():
        found = FieldError(format_path(_wire_path(error["loc"], data)), _reason(error))
        if found not in errors:
            errors.append(found)
    return errors


def _model_for(data: dict[str, Any]) -> tuple[type[BigModelJob] | type[BigModelService] | None, list[FieldError]]:
    """Choose the model from `kind` and check `apiVersion`, the two things that decide how to read the rest."""
    errors: list[FieldError] = []
    kind = data.get("kind")
    model = MODELS_BY_KIND.get(kind) if isinstance(kind, str) else None
    if kind is None:
        errors.append(FieldError("kind", f"required field is missing; expected {' or '.join(MODELS_BY_KIND)}"))
    elif model is None:
        errors.append(FieldError("kind", f"unknown kind {_shown(kind)}; expected {' or '.join(MODELS_BY_KIND)}"))
    api_version = data.get("apiVersion")
    if api_version is None:
        errors.append(FieldError("apiVersion", f"required field is missing; expected {API_VERSION}"))
    elif api_version != API_VERSION:
        errors.append(FieldError("apiVersion", f"unsupported apiVersion {_shown(api_version)}; expected {API_VERSION}"))
    return model, errors


def _validate(data: dict[str, Any]) -> tuple[Resource | None, list[FieldError]]:
    model, errors = _model_for(data)
    if model is None or errors:
        return None, errors
    try:
        # by_name=False: the API server knows only the camelCase names, so snake_case keys must fail here too.
        return model.model_validate(data, by_alias=True, by_name=False), []
    except ValidationError as exc:
        return None, _from_validation_error(exc, data)


def validation_errors(obj: dict[str, Any]) -> list[FieldError]:
    """Every problem in a resource body (a parsed manifest or an object read from the API server); [] when valid."""
    return _validate(obj)[1]


def parse_manifest(data: Any, source: str) -> Resource:
    """The resource described by one parsed YAML document; raises ManifestError naming source on any problem."""
    if not isinstance(data, dict):
        raise ManifestError(
            source, [FieldError("", f"expected a mapping with apiVersion, kind, metadata and spec, not {_shown(data)}")]
        )
    resource, errors = _validate(data)
    if resource is None:
        raise ManifestError(source, errors)
    return resource


def _documents(text: str, source: str) -> list[Any]:
    try:
        documents = [document for document in yaml.safe_load_all(text) if document is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ManifestError(source, [FieldError("", f"not valid YAML: {where}{problem}")]) from exc
    return documents


def load_manifest(path: str | Path) -> Resource:
    """Read and validate a manifest file holding exactly one BigModelJob or BigModelService."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ManifestError(source, [FieldError("", "no such file")]) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(source, [FieldError("", f"cannot read the file: {exc}")]) from exc
    documents = _documents(text, source)
    if len(documents) != 1:
        found = "no documents" if not documents else f"{len(documents)} documents"
        raise ManifestError(source, [FieldError("", f"expected exactly one resource in the file, found {found}")])
    return parse_manifest(documents[0], source)
