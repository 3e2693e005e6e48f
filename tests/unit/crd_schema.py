"""The generated CRD schemas applied the way the API server applies them, for tests that have no API server.

The server validates a custom resource with its OpenAPI v3.0 schema, and kubectl's default strict field validation
rejects fields the schema does not know. OpenAPI v3.0 validation is JSON Schema draft 4 (boolean exclusive bounds,
anyOf for int-or-string), and draft 4 ignores the x-kubernetes-* keywords; strictness is added as
additionalProperties: false on every object that lists its properties. CEL rules are not evaluated here.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "crds"
EXAMPLES_DIR = ROOT / "examples"


def load_crds() -> dict[str, dict[str, Any]]:
    """The CRDs as installed: crds/*.yaml by kind."""
    crds: dict[str, dict[str, Any]] = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text(encoding="utf-8"))
        crds[crd["spec"]["names"]["kind"]] = crd
    return crds


def openapi_schema(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def _strict(node: dict[str, Any]) -> dict[str, Any]:
    out = dict(node)
    if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["properties"] = {name: _strict(child) for name, child in node["properties"].items()}
        out["additionalProperties"] = False
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = _strict(node["additionalProperties"])
    if "items" in node:
        out["items"] = _strict(node["items"])
    return out


def strict_validator(schema: dict[str, Any]) -> jsonschema.Draft4Validator:
    """Validates a value against one schema node, unknown fields rejected."""
    return jsonschema.Draft4Validator(_strict(copy.deepcopy(schema)))


def server_validator(crd: dict[str, Any]) -> jsonschema.Draft4Validator:
    """Validates a whole resource as the API server would, CEL rules aside; metadata is the server's own."""
    schema = copy.deepcopy(openapi_schema(crd))
    schema["properties"]["metadata"] = {"type": "object"}
    return strict_validator(schema)


def schema_node(schema: dict[str, Any], parts: list[str | int]) -> dict[str, Any]:
    """The schema of the value at a path of keys and list indexes."""
    node = schema
    for part in parts:
        node = node["items"] if isinstance(part, int) else node["properties"][part]
    return node
