"""CustomResourceDefinitions generated from the pydantic models, so the API server and the CLI check the same rules.

pydantic writes JSON Schema (draft 2020-12); the API server wants a structural OpenAPI v3.0 schema. The conversion
below knows every keyword the models produce today and raises on any other, so a new field type can never slip an
invalid or silently weaker CRD past `bigmodel crds`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bigmodel.api.common import Model
from bigmodel.api.job import BigModelJob
from bigmodel.api.service import BigModelService
from bigmodel.api.wire import GROUP, PLURALS, VERSION

HEADER = "# Generated from operator/bigmodel/api by `bigmodel crds`. Do not edit: change the models and regenerate.\n"

# Keywords copied as they are: each means the same in JSON Schema and in the OpenAPI v3.0 subset Kubernetes accepts.
_KEPT = frozenset(
    {
        "description",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "pattern",
        "minItems",
        "maxItems",
        "minProperties",
        "maxProperties",
        "enum",
        "required",
        "x-kubernetes-list-type",
        "x-kubernetes-list-map-keys",
        "x-kubernetes-validations",
    }
)
# Key order of every converted node, so the generated YAML reads the same way everywhere and never churns.
_ORDER = (
    "type",
    "anyOf",
    "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
    "format",
    "description",
    "enum",
    "default",
    "minimum",
    "exclusiveMinimum",
    "maximum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "minProperties",
    "maxProperties",
    "oneOf",
    "x-kubernetes-validations",
    "required",
    "additionalProperties",
    "properties",
    "items",
)
# Keywords consumed by the conversion itself.
_HANDLED = frozenset(
    {
        "$ref",
        "title",
        "type",
        "default",
        "anyOf",
        "oneOf",
        "const",
        "format",
        "properties",
        "additionalProperties",
        "items",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "x-kubernetes-int-or-string",
        "x-kubernetes-preserve-unknown-fields",
    }
)
_FORMATS = frozenset({"date-time"})
_INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]
_ROOT_FIELDS = ("apiVersion", "kind", "spec", "status")


class SchemaConversionError(ValueError):
    """The models use a JSON Schema construct that has no structural OpenAPI equivalent here."""


def _resolve(
    node: dict[str, Any], defs: dict[str, Any], path: str, seen: tuple[str, ...]
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Inline a $ref; the referring node's own keys (a field's description, default) win over the definition's."""
    ref = node["$ref"]
    prefix = "#/$defs/"
    name = ref[len(prefix) :] if ref.startswith(prefix) else ""
    if name not in defs:
        raise SchemaConversionError(f"{path}: cannot resolve $ref {ref!r}")
    if name in seen:
        raise SchemaConversionError(f"{path}: recursive model {name} cannot be written as a structural schema")
    merged = dict(defs[name])
    merged.update({key: value for key, value in node.items() if key != "$ref"})
    return merged, (*seen, name)


def _without_null(node: dict[str, Any], path: str) -> dict[str, Any]:
    """Optional[X] is X that may be left out: Kubernetes fields are omitted rather than set to null."""
    branches = [branch for branch in node["anyOf"] if branch != {"type": "null"}]
    if len(branches) != 1 or len(branches) == len(node["anyOf"]):
        raise SchemaConversionError(f"{path}: anyOf {node['anyOf']!r} is not Optional[X] or an int-or-string quantity")
    merged = dict(branches[0])
    merged.update({key: value for key, value in node.items() if key != "anyOf"})
    if merged.get("default", ...) is None:
        del merged["default"]
    return merged


def _cel_rule(rule: dict[str, Any], path: str) -> dict[str, Any]:
    if set(rule) != {"rule", "message"}:
        raise SchemaConversionError(f"{path}: a validation rule needs exactly a rule and a message, got {sorted(rule)}")
    return {"rule": rule["rule"], "message": rule["message"]}


def _convert(node: dict[str, Any], defs: dict[str, Any], path: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    if "$ref" in node:
        resolved, seen_now = _resolve(node, defs, path, seen)
        return _convert(resolved, defs, path, seen_now)
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        return _convert(_without_null(node, path), defs, path, seen)

    unknown = set(node) - _KEPT - _HANDLED
    if unknown:
        raise SchemaConversionError(f"{path}: JSON Schema keywords {sorted(unknown)} have no CRD conversion")

    out: dict[str, Any] = {}
    if node.get("x-kubernetes-int-or-string"):
        if node.get("anyOf") != _INT_OR_STRING or "type" in node:
            raise SchemaConversionError(f"{path}: an int-or-string field must be exactly int | str")
        out["anyOf"] = copy.deepcopy(_INT_OR_STRING)
        out["x-kubernetes-int-or-string"] = True
    elif node.get("x-kubernetes-preserve-unknown-fields"):
        if node.get("type") != "object":
            raise SchemaConversionError(f"{path}: only objects may preserve unknown fields")
        # Properties under a preserved object would be validated half-way; the field is passed through whole.
        out["type"] = "object"
        out["x-kubernetes-preserve-unknown-fields"] = True
        if "description" in node:
            out["description"] = node["description"]
        return out
    elif isinstance(node.get("type"), str):
        out["type"] = node["type"]
    else:
        raise SchemaConversionError(f"{path}: type {node.get('type')!r}; every structural schema node needs one type")

    for key in _KEPT & set(node):
        # Copies: the same definition is inlined in several places, and shared objects would become YAML anchors.
        out[key] = copy.deepcopy(node[key])
    if "x-kubernetes-validations" in out:
        out["x-kubernetes-validations"] = [_cel_rule(rule, path) for rule in out["x-kubernetes-validations"]]
    if "default" in node and node["default"] is not None:
        out["default"] = copy.deepcopy(node["default"])
    if "const" in node:
        out["enum"] = [node["const"]]
    if "format" in node:
        if node["format"] not in _FORMATS:
            raise SchemaConversionError(f"{path}: format {node['format']!r} has no CRD conversion")
        out["format"] = node["format"]
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if exclusive in node:
            if bound in node:
                raise SchemaConversionError(f"{path}: both {bound} and {exclusive}")
            # JSON Schema's exclusive bound is a number; OpenAPI v3.0's is a flag on the inclusive one.
            out[bound] = node[exclusive]
            out[exclusive] = True
    if "oneOf" in node:
        if not all(set(branch) == {"required"} for branch in node["oneOf"]):
            raise SchemaConversionError(f"{path}: oneOf branches may only list required fields")
        out["oneOf"] = copy.deepcopy(node["oneOf"])

    if "properties" in node:
        out["properties"] = {
            name: _convert(child, defs, f"{path}.{name}", seen) for name, child in node["properties"].items()
        }
    additional = node.get("additionalProperties")
    if isinstance(additional, dict):
        if "properties" in node:
            raise SchemaConversionError(f"{path}: properties and additionalProperties together are not structural")
        out["additionalProperties"] = _convert(additional, defs, f"{path}[*]", seen)
    elif additional is True:
        raise SchemaConversionError(f"{path}: a free-form object needs x-kubernetes-preserve-unknown-fields")
    # additionalProperties: false (extra="forbid") is dropped: the API server prunes or, with kubectl's default
    # strict field validation, rejects unknown fields of a structural schema anyway.
    if "items" in node:
        out["items"] = _convert(node["items"], defs, f"{path}[]", seen)
    return {key: out[key] for key in _ORDER if key in out}


def openapi_schema(model: type[Model]) -> dict[str, Any]:
    """The structural openAPIV3Schema of a resource model: apiVersion, kind, spec and status; metadata is the server's."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    defs = schema.get("$defs", {})
    properties: dict[str, Any] = {}
    for name in _ROOT_FIELDS:
        if name in ("apiVersion", "kind"):
            # The API server owns these two; controller-gen likewise describes them without constraints.
            properties[name] = {"type": "string", "description": schema["properties"][name]["description"]}
        else:
            properties[name] = _convert(schema["properties"][name], defs, name)
    unexpected = set(schema["properties"]) - set(_ROOT_FIELDS) - {"metadata"}
    if unexpected:
        raise SchemaConversionError(f"{model.__name__}: top-level fields {sorted(unexpected)} are not part of a CRD")
    return {
        "description": schema["description"],
        "type": "object",
        "required": [name for name in schema.get("required", []) if name != "metadata"],
        "properties": properties,
    }


def _column(name: str, path: str, kind: str = "string", priority: int = 0, description: str = "") -> dict[str, Any]:
    column: dict[str, Any] = {"name": name, "type": kind, "jsonPath": path}
    if description:
        column["description"] = description
    if priority:
        column["priority"] = priority
    return column


@dataclass(frozen=True)
class _Kind:
    model: type[Model]
    plural: str
    short_name: str
    columns: tuple[dict[str, Any], ...]

    @property
    def name(self) -> str:
        return self.model.__name__


_AGE = _column("Age", ".metadata.creationTimestamp", "date")
_MESSAGE = _column("Message", ".status.message", priority=1, description="The latest thing that happened.")

KINDS: tuple[_Kind, ...] = (
    _Kind(
        model=BigModelJob,
        plural=PLURALS["BigModelJob"],
        short_name="bmj",
        columns=(
            _column("Phase", ".status.phase", description="Where the job is."),
            _column("Workers", ".status.workersReady", description="ready/desired worker pods."),
            _column("Restarts", ".status.restarts", "integer", description="Cluster rebuilds so far."),
            _column("Progress", ".status.progress.percent", "integer", description="Percent of the planned steps."),
            _AGE,
            _column("Loss", ".status.metrics.loss", "number", 1, "Latest training loss."),
            _MESSAGE,
        ),
    ),
    _Kind(
        model=BigModelService,
        plural=PLURALS["BigModelService"],
        short_name="bms",
        columns=(
            _column("Phase", ".status.phase", description="Where the service is."),
            _column("Replicas", ".status.replicasReady", description="running/desired Serve replicas."),
            _column("Workers", ".status.workersReady", description="ready/desired worker pods."),
            _column("URL", ".status.url", description="In-cluster URL of the HTTP endpoint."),
            _AGE,
            _column("Version", ".status.model.version", priority=1, description="Version of the served model."),
            _column("Traffic", ".status.traffic", priority=1, description="Versions serving and their shares."),
            _MESSAGE,
        ),
    ),
)


def crd(kind: _Kind) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{kind.plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind.name,
                "listKind": f"{kind.name}List",
                "plural": kind.plural,
                "singular": kind.name.lower(),
                "shortNames": [kind.short_name],
                "categories": ["bigmodel"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [dict(column) for column in kind.columns],
                    "schema": {"openAPIV3Schema": openapi_schema(kind.model)},
                }
            ],
        },
    }


def render_crds() -> dict[str, dict[str, Any]]:
    """Every CRD of the operator, by file name (bigmodel.dev_bigmodeljobs.yaml, as controller-gen names them)."""
    return {f"{GROUP}_{kind.plural}.yaml": crd(kind) for kind in KINDS}


class _Dumper(yaml.SafeDumper):
    """Writes repeated values out in full: kubectl and Helm read anchors, but people reading the CRD should not."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_crd(obj: dict[str, Any]) -> str:
    """One CRD as the YAML text written to disk: header, then keys in the order the generator built them."""
    return HEADER + yaml.dump(obj, Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)


def write_crds(directory: Path) -> list[Path]:
    """Write every CRD into directory (created if missing); returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, obj in render_crds().items():
        path = directory / name
        path.write_text(dump_crd(obj), encoding="utf-8")
        written.append(path)
    return written
