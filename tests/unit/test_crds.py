"""The CRDs in crds/ are generated from the models, valid for Kubernetes, structural, and accept every example."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from crd_schema import CRD_DIR, EXAMPLES_DIR, load_crds, openapi_schema, server_validator, strict_validator

from bigmodel.api.crd import HEADER, SchemaConversionError, _convert, dump_crd, render_crds, write_crds
from bigmodel.api.job import BigModelJobStatus
from bigmodel.api.manifests import load_manifest
from bigmodel.api.service import BigModelServiceStatus

RENDERED = render_crds()
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.yaml"))

# What a structural schema node may hold (apiextensions.k8s.io/v1 JSONSchemaProps, the subset we generate).
_NODE_KEYS = {
    "type",
    "format",
    "description",
    "default",
    "enum",
    "minimum",
    "exclusiveMinimum",
    "maximum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "anyOf",
    "oneOf",
    "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-validations",
}
# Inside anyOf/oneOf branches Kubernetes forbids everything that would make the structure ambiguous.
_FORBIDDEN_IN_BRANCHES = {"type", "description", "default", "additionalProperties", "nullable", "title"}


def structural_problems(node: dict[str, Any], path: str) -> list[str]:
    """Violations of the Kubernetes structural-schema rules under node."""
    problems = [f"{path}: unexpected keyword {key!r}" for key in set(node) - _NODE_KEYS]
    int_or_string = node.get("x-kubernetes-int-or-string") is True
    if int_or_string:
        if node.get("anyOf") != [{"type": "integer"}, {"type": "string"}] or "type" in node:
            problems.append(f"{path}: int-or-string must be anyOf [integer, string] with no type")
    elif not node.get("type"):
        problems.append(f"{path}: no type")
    if node.get("x-kubernetes-preserve-unknown-fields") and ("properties" in node or node.get("type") != "object"):
        problems.append(f"{path}: a preserved object must be a bare type: object")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{path}: properties and additionalProperties are mutually exclusive")
    for keyword in ("anyOf", "oneOf"):
        for index, branch in enumerate(node.get(keyword, [])):
            where = f"{path}.{keyword}[{index}]"
            if not int_or_string or keyword != "anyOf":
                problems += [f"{where}: {key!r} is not allowed in a branch" for key in _FORBIDDEN_IN_BRANCHES & set(branch)]
            problems += [f"{where}: {key!r} is not allowed" for key in set(branch) if key.startswith("x-kubernetes")]
    for name, child in node.get("properties", {}).items():
        problems += structural_problems(child, f"{path}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        problems += structural_problems(node["additionalProperties"], f"{path}[*]")
    if "items" in node:
        problems += structural_problems(node["items"], f"{path}[]")
    return problems


def _refs(value: Any) -> list[str]:
    refs: list[str] = []
    if isinstance(value, dict):
        if "$ref" in value:
            refs.append(str(value["$ref"]))
        for child in value.values():
            refs += _refs(child)
    elif isinstance(value, list):
        for child in value:
            refs += _refs(child)
    return refs


def test_crds_on_disk_match_the_models() -> None:
    on_disk = {path.name: path.read_text(encoding="utf-8") for path in CRD_DIR.glob("*.yaml")}
    expected = {name: dump_crd(obj) for name, obj in RENDERED.items()}
    assert set(on_disk) == set(expected), "crds/ holds other files than the models generate: run `bigmodel crds`"
    for name, text in expected.items():
        assert on_disk[name] == text, f"crds/{name} is out of date with operator/bigmodel/api: run `bigmodel crds`"


def test_write_crds_writes_what_render_crds_returns(tmp_path: Path) -> None:
    written = write_crds(tmp_path / "out")
    assert sorted(path.name for path in written) == sorted(RENDERED)
    for path in written:
        text = path.read_text(encoding="utf-8")
        assert text.startswith(HEADER)
        assert yaml.safe_load(text) == RENDERED[path.name]


@pytest.mark.parametrize("name", sorted(RENDERED))
def test_crd_is_a_valid_kubernetes_object(name: str) -> None:
    version = kubernetes_validate.latest_version()
    kubernetes_validate.validate(RENDERED[name], version, strict=True)


@pytest.mark.parametrize("name", sorted(RENDERED))
def test_schema_is_structural(name: str) -> None:
    schema = openapi_schema(RENDERED[name])
    assert _refs(schema) == []
    assert structural_problems(schema, "openAPIV3Schema") == []
    assert set(schema["properties"]) == {"apiVersion", "kind", "spec", "status"}
    assert schema["type"] == "object"


def test_structural_checker_catches_violations() -> None:
    bad = {
        "type": "object",
        "properties": {
            "untyped": {"description": "no type"},
            "branchy": {"type": "string", "anyOf": [{"type": "string", "description": "typed branch"}]},
            "both": {"type": "object", "properties": {}, "additionalProperties": {"type": "string"}},
        },
    }
    problems = structural_problems(bad, "root")
    assert any("root.untyped: no type" in problem for problem in problems)
    assert any("root.branchy.anyOf[0]" in problem for problem in problems)
    assert any("mutually exclusive" in problem for problem in problems)


@pytest.mark.parametrize(
    ("schema", "fragment"),
    [
        ({"type": "string", "format": "uri"}, "format 'uri'"),
        ({"type": "array", "prefixItems": [{"type": "string"}]}, "prefixItems"),
        ({"anyOf": [{"type": "string"}, {"type": "integer"}]}, "not Optional[X]"),
        ({"type": "object", "additionalProperties": True}, "x-kubernetes-preserve-unknown-fields"),
        ({"$ref": "#/$defs/Missing"}, "cannot resolve"),
        ({"type": "integer", "minimum": 0, "exclusiveMinimum": 0}, "both minimum and exclusiveMinimum"),
        ({"type": "object", "oneOf": [{"type": "object"}]}, "oneOf branches"),
        ({"type": ["string", "integer"]}, "needs one type"),
        ({"description": "untyped"}, "needs one type"),
    ],
    ids=[
        "format",
        "unknown-keyword",
        "union",
        "free-form-object",
        "dangling-ref",
        "double-bound",
        "typed-oneOf",
        "type-list",
        "untyped",
    ],
)
def test_unconvertible_schema_fails_loudly(schema: dict[str, Any], fragment: str) -> None:
    with pytest.raises(SchemaConversionError) as caught:
        _convert({"type": "object", "properties": {"x": schema}}, {}, "spec")
    assert str(caught.value).startswith("spec.x")
    assert fragment in str(caught.value)


def test_printer_columns() -> None:
    job = RENDERED["bigmodel.dev_bigmodeljobs.yaml"]["spec"]
    service = RENDERED["bigmodel.dev_bigmodelservices.yaml"]["spec"]
    columns = {
        "job": [(c["name"], c["jsonPath"], c.get("priority", 0)) for c in job["versions"][0]["additionalPrinterColumns"]],
        "service": [
            (c["name"], c["jsonPath"], c.get("priority", 0)) for c in service["versions"][0]["additionalPrinterColumns"]
        ],
    }
    assert columns["job"][:5] == [
        ("Phase", ".status.phase", 0),
        ("Workers", ".status.workersReady", 0),
        ("Restarts", ".status.restarts", 0),
        ("Progress", ".status.progress.percent", 0),
        ("Age", ".metadata.creationTimestamp", 0),
    ]
    assert {name for name, _, priority in columns["job"] if priority == 1} == {"Loss", "Message"}
    assert [name for name, _, priority in columns["service"] if priority == 0] == [
        "Phase",
        "Replicas",
        "Workers",
        "URL",
        "Age",
    ]
    assert [(name, path) for name, path, priority in columns["service"] if priority == 1] == [
        ("Version", ".status.model.version"),
        ("Traffic", ".status.traffic"),
        ("Message", ".status.message"),
    ], "kubectl get bms -o wide: the versions serving and their shares"
    assert job["names"]["shortNames"] == ["bmj"] and service["names"]["shortNames"] == ["bms"]
    assert job["versions"][0]["subresources"] == {"status": {}}


@pytest.mark.parametrize("path", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_example_is_accepted_by_its_crd_and_by_the_cli(path: Path) -> None:
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    crds = load_crds()
    assert document["kind"] in crds, f"{path.name}: no CRD for kind {document['kind']}"
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in server_validator(crds[document["kind"]]).iter_errors(document)]
    assert errors == []
    resource = load_manifest(path)
    assert resource.kind == document["kind"]
    # What the CLI writes back (defaults filled in) must be acceptable to the API server as well.
    assert list(server_validator(crds[document["kind"]]).iter_errors(resource.to_wire())) == []


def test_examples_cover_both_kinds() -> None:
    kinds = {yaml.safe_load(path.read_text(encoding="utf-8"))["kind"] for path in EXAMPLES}
    assert kinds == {"BigModelJob", "BigModelService"}


def test_operator_written_status_is_accepted_by_the_schema() -> None:
    now = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    condition = {"type": "Ready", "status": "True", "reason": "Serving", "lastTransitionTime": now, "observedGeneration": 2}
    statuses = {
        "BigModelJob": BigModelJobStatus.model_validate(
            {
                "phase": "Running",
                "conditions": [condition],
                "workersReady": "2/2",
                "startTime": now,
                "lastCheckpoint": {"path": "/ckpt/3", "step": 30, "epoch": 2, "time": now},
                "metrics": {"loss": 0.25, "samplesPerSecond": 900.5},
                "progress": {"percent": 40, "step": 30, "totalSteps": 75, "epoch": 2, "etaSeconds": 12},
            }
        ),
        "BigModelService": BigModelServiceStatus.model_validate(
            {
                "phase": "Ready",
                "conditions": [condition],
                "replicas": {"desired": 2, "running": 2},
                "replicasReady": "2/2",
                "workers": {"desired": 1, "ready": 1},
                "url": "http://digits-serve.default.svc:8000",
                "model": {"source": "/models/digits", "version": "1"},
            }
        ),
    }
    for kind, crd in load_crds().items():
        validator = strict_validator(openapi_schema(crd)["properties"]["status"])
        assert list(validator.iter_errors(statuses[kind].to_wire())) == []
