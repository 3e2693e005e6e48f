"""Bad manifests are refused with the field the user wrote and a readable reason, by the CLI and by the CRD alike."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from crd_schema import EXAMPLES_DIR, load_crds, openapi_schema, schema_node, server_validator

from bigmodel.api.job import BigModelJob
from bigmodel.api.manifests import (
    FieldError,
    ManifestError,
    format_path,
    load_manifest,
    parse_manifest,
    validation_errors,
)
from bigmodel.api.service import BigModelService

JOB: dict[str, Any] = {
    "apiVersion": "bigmodel.dev/v1alpha1",
    "kind": "BigModelJob",
    "metadata": {"name": "digits"},
    "spec": {
        "workload": {"builtin": {"task": "digits", "epochs": 2, "batchSize": 32}},
        "workers": {"replicas": 2, "resources": {"cpu": "1", "memory": "2Gi"}},
    },
}
SERVICE: dict[str, Any] = {
    "apiVersion": "bigmodel.dev/v1alpha1",
    "kind": "BigModelService",
    "metadata": {"name": "digits"},
    "spec": {"model": {"jobName": "digits"}, "replicas": {"min": 1, "max": 2}},
}

_DELETE = object()
CAUSAL_LM = {"model": "s3://models/tiny-llama", "dataset": "s3://data/docs.jsonl"}


def edit(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """A copy of base with dotted paths set, missing objects created; the value _DELETE removes the key."""
    document = copy.deepcopy(base)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        parent: dict[str, Any] = document
        for part in parents:
            parent = parent.setdefault(part, {})
        if value is _DELETE:
            del parent[last]
        else:
            parent[last] = value
    return document


# How the API server treats the same document: "schema" (the OpenAPI schema rejects it), "cel" (only an
# x-kubernetes-validations rule can, so one must sit on the object the CLI names) or "routing" (apiVersion and kind
# pick the CRD; a wrong one never reaches our schema).
BAD: list[tuple[str, dict[str, Any], str, str, str]] = [
    ("replicas-not-a-number", edit(JOB, {"spec.workers.replicas": "two"}), "spec.workers.replicas", "must be a whole number, not 'two'", "schema"),
    ("negative-replicas", edit(JOB, {"spec.workers.replicas": -1}), "spec.workers.replicas", "must be >= 1, not -1", "schema"),
    ("zero-replicas", edit(JOB, {"spec.workers.replicas": 0}), "spec.workers.replicas", "must be >= 1, not 0", "schema"),
    ("unknown-task", edit(JOB, {"spec.workload.builtin.task": "mnist"}), "spec.workload.builtin.task", "must be 'digits', 'gpt' or 'causal-lm', not 'mnist'", "schema"),
    ("missing-workload", edit(JOB, {"spec.workload": _DELETE}), "spec.workload", "required field is missing", "schema"),
    ("two-workloads", edit(JOB, {"spec.workload.command": ["python", "train.py"]}), "spec.workload", "set exactly one of builtin, entrypoint or command (found: builtin, command)", "schema"),
    ("no-workload-kind", edit(JOB, {"spec.workload": {}}), "spec.workload", "found: none", "schema"),
    ("gpu-as-resource-name", edit(JOB, {"spec.workers.resources": {"nvidia.com/gpu": 1}}), "spec.workers.resources", "GPUs are requested with the field 'gpu'", "schema"),
    ("gpu-in-cpu-quantity", edit(JOB, {"spec.workers.resources.cpu": "1 gpu"}), "spec.workers.resources.cpu", "'1 gpu' is not a Kubernetes quantity", "schema"),
    ("fractional-pod-gpu", edit(JOB, {"spec.workers.resources.gpu": 0.5}), "spec.workers.resources.gpu", "whole number of GPUs", "schema"),
    ("bad-quantity", edit(JOB, {"spec.workers.resources.memory": "8 GB"}), "spec.workers.resources.memory", "'8 GB' is not a Kubernetes quantity", "schema"),
    ("negative-quantity", edit(JOB, {"spec.head.resources": {"cpu": "-2"}}), "spec.head.resources.cpu", "must not be negative", "schema"),
    ("snake-case-key", edit(JOB, {"spec.workload.builtin.batch_size": 16}), "spec.workload.builtin.batch_size", "unknown field (fields are camelCase: did you mean 'batchSize'?)", "schema"),
    ("unknown-field", edit(JOB, {"spec.restartPolicy": "Never"}), "spec.restartPolicy", "unknown field", "schema"),
    ("bad-toleration-effect", edit(JOB, {"spec.workers.tolerations": [{"key": "gpu", "effect": "NoRun"}]}), "spec.workers.tolerations[0].effect", "must be 'NoSchedule', 'PreferNoSchedule' or 'NoExecute', not 'NoRun'", "schema"),
    ("label-value-not-string", edit(JOB, {"spec.head.nodeSelector": {"example.com/pool": 3}}), 'spec.head.nodeSelector["example.com/pool"]', "must be a string, not 3", "schema"),
    ("heads-not-dividing-width", edit(JOB, {"spec.workload.builtin": {"task": "gpt", "gpt": {"heads": 3, "embedDim": 64}}}), "spec.workload.builtin.gpt", "embedDim (64) must be a multiple of heads (3)", "cel"),
    ("gpt-options-for-digits", edit(JOB, {"spec.workload.builtin.gpt": {"layers": 2}}), "spec.workload.builtin", "options for 'gpt' given, but the task is 'digits'", "cel"),
    ("causal-lm-without-options", edit(JOB, {"spec.workload.builtin.task": "causal-lm"}), "spec.workload.builtin", "task causal-lm needs causalLm options (model and dataset)", "cel"),
    ("causal-lm-options-for-gpt", edit(JOB, {"spec.workload.builtin": {"task": "gpt", "causalLm": CAUSAL_LM}}), "spec.workload.builtin", "options for 'causal-lm' given, but the task is 'gpt'", "cel"),
    ("causal-lm-without-dataset", edit(JOB, {"spec.workload.builtin": {"task": "causal-lm", "causalLm": {"model": "/models/tiny"}}}), "spec.workload.builtin.causalLm.dataset", "required field is missing", "schema"),
    ("causal-lm-csv-dataset", edit(JOB, {"spec.workload.builtin": {"task": "causal-lm", "causalLm": CAUSAL_LM | {"dataset": "s3://data/docs.csv"}}}), "spec.workload.builtin.causalLm.dataset", "must be a .txt or .jsonl file, not 's3://data/docs.csv'", "cel"),
    ("causal-lm-short-context", edit(JOB, {"spec.workload.builtin": {"task": "causal-lm", "causalLm": CAUSAL_LM | {"contextLength": 4}}}), "spec.workload.builtin.causalLm.contextLength", "must be >= 8, not 4", "schema"),
    ("causal-lm-snake-case", edit(JOB, {"spec.workload.builtin": {"task": "causal-lm", "causal_lm": CAUSAL_LM}}), "spec.workload.builtin.causal_lm", "did you mean 'causalLm'?", "schema"),
    ("claim-with-relative-storage", edit(JOB, {"spec.checkpoint": {"volumeClaimName": "runs", "storage": "runs/digits"}}), "spec.checkpoint", "volumeClaimName needs storage to be the absolute path", "cel"),
    ("unknown-strategy", edit(JOB, {"spec.training.strategy": "zero3"}), "spec.training.strategy", "must be 'ddp' or 'fsdp', not 'zero3'", "schema"),
    ("no-accumulation", edit(JOB, {"spec.training.gradientAccumulationSteps": 0}), "spec.training.gradientAccumulationSteps", "must be >= 1, not 0", "schema"),
    ("training-for-a-user-loop", edit(JOB, {"spec.workload": {"entrypoint": {"function": "loop:train"}}, "spec.training.strategy": "fsdp"}), "spec", "training applies to workload.builtin; a user loop shards", "cel"),
    ("async-save-for-a-command", edit(JOB, {"spec.workload": {"command": ["python", "train.py"]}, "spec.checkpoint.asyncSave": True}), "spec", "checkpoint.asyncSave applies to workload.builtin", "cel"),
    ("min-replicas-above-replicas", edit(JOB, {"spec.workers.replicas": 2, "spec.workers.minReplicas": 3}), "spec.workers", "minReplicas must be at most replicas", "cel"),
    ("zero-min-replicas", edit(JOB, {"spec.workers.minReplicas": 0}), "spec.workers.minReplicas", "must be >= 1, not 0", "schema"),
    ("grace-too-short", edit(JOB, {"spec.terminationGracePeriodSeconds": 5}), "spec.terminationGracePeriodSeconds", "must be >= 10, not 5", "schema"),
    ("learning-rate-zero", edit(JOB, {"spec.workload.builtin.learningRate": 0}), "spec.workload.builtin.learningRate", "must be > 0", "schema"),
    ("service-min-above-max", edit(SERVICE, {"spec.replicas": {"min": 5, "max": 2}}), "spec.replicas", "min (5) must not exceed max (2)", "cel"),
    ("service-workers-min-above-max", edit(SERVICE, {"spec.workers": {"minReplicas": 3, "maxReplicas": 1}}), "spec.workers", "minReplicas (3) must not exceed maxReplicas (1)", "cel"),
    ("service-job-and-uri", edit(SERVICE, {"spec.model.uri": "s3://bucket/model"}), "spec.model", "set exactly one of jobName or uri (found: both)", "schema"),
    ("service-no-source", edit(SERVICE, {"spec.model": {"name": "digits"}}), "spec.model", "found: neither", "schema"),
    ("service-short-idle-timeout", edit(SERVICE, {"spec.workers": {"idleTimeoutSeconds": 5}}), "spec.workers.idleTimeoutSeconds", "must be >= 10, not 5", "schema"),
    ("service-negative-replica-gpu", edit(SERVICE, {"spec.replicaResources": {"gpu": -0.5}}), "spec.replicaResources.gpu", "must be >= 0", "schema"),
    ("env-value-and-value-from", edit(JOB, {"spec.env": [{"name": "TOKEN", "value": "x", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}]}), "spec.env[0]", "set value or valueFrom, not both", "cel"),
    ("env-value-from-no-source", edit(JOB, {"spec.env": [{"name": "TOKEN", "valueFrom": {}}]}), "spec.env[0].valueFrom", "set exactly one of secretKeyRef or configMapKeyRef", "schema"),
    ("env-value-from-two-sources", edit(SERVICE, {"spec.env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}, "configMapKeyRef": {"name": "hf", "key": "token"}}}]}), "spec.env[0].valueFrom", "set exactly one of secretKeyRef or configMapKeyRef", "schema"),
    ("env-key-ref-without-key", edit(JOB, {"spec.env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf"}}}]}), "spec.env[0].valueFrom.secretKeyRef.key", "required field is missing", "schema"),
    ("env-reserved-name", edit(JOB, {"spec.env": [{"name": "RAY_HEAD_ADDRESS", "value": "elsewhere:6379"}]}), "spec.env[0].name", "RAY_HEAD_ADDRESS: the operator sets this variable itself", "cel"),
    ("env-reserved-auth-token", edit(SERVICE, {"spec.env": [{"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {"name": "mine", "key": "token"}}}]}), "spec.env[0].name", "RAY_AUTH_TOKEN: the operator sets this variable itself", "cel"),
    ("env-from-two-sources", edit(JOB, {"spec.envFrom": [{"secretRef": {"name": "a"}, "configMapRef": {"name": "b"}}]}), "spec.envFrom[0]", "set exactly one of secretRef or configMapRef", "schema"),
    ("env-from-prefix-only", edit(SERVICE, {"spec.envFrom": [{"prefix": "DB_"}]}), "spec.envFrom[0]", "set exactly one of secretRef or configMapRef", "schema"),
    ("env-from-unknown-field", edit(JOB, {"spec.envFrom": [{"secret": {"name": "a"}}]}), "spec.envFrom[0].secret", "unknown field", "schema"),
    ("unknown-scheduler", edit(JOB, {"spec.schedulerName": "kube-batch"}), "spec.schedulerName", "must be 'volcano', not 'kube-batch'", "schema"),
    ("queue-name-not-a-name", edit(JOB, {"spec.queueName": "Team_A"}), "spec.queueName", "'Team_A' does not match the pattern", "schema"),
    ("queue-name-too-long", edit(JOB, {"spec.queueName": "q" * 64}), "spec.queueName", "must be at most 63 characters", "schema"),
    ("wrong-api-version", edit(JOB, {"apiVersion": "bigmodel.dev/v1"}), "apiVersion", "unsupported apiVersion 'bigmodel.dev/v1'; expected bigmodel.dev/v1alpha1", "routing"),
    ("wrong-kind", edit(JOB, {"kind": "BigModelJobs"}), "kind", "unknown kind 'BigModelJobs'; expected BigModelJob or BigModelService", "routing"),
    ("missing-kind", edit(SERVICE, {"kind": _DELETE}), "kind", "required field is missing", "routing"),
]


def _one_line(error: ManifestError) -> str:
    text = str(error)
    assert "\n" not in text
    return text


@pytest.mark.parametrize(("document", "field", "fragment"), [case[1:4] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_manifest_names_field_and_reason(document: dict[str, Any], field: str, fragment: str) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(document, "job.yaml")
    error = caught.value
    assert (error.source, error.field) == ("job.yaml", field)
    assert fragment in error.reason
    assert _one_line(error).startswith(f"job.yaml: {field}: {error.reason}")
    assert validation_errors(document)[0] == FieldError(field, error.reason)


@pytest.mark.parametrize(
    ("document", "field", "verdict"),
    [(case[1], case[2], case[4]) for case in BAD],
    ids=[case[0] for case in BAD],
)
def test_api_server_schema_agrees(document: dict[str, Any], field: str, verdict: str) -> None:
    crds = load_crds()
    if verdict == "routing":
        assert document.get("kind") not in crds or document["apiVersion"] != "bigmodel.dev/v1alpha1"
        return
    crd = crds[document["kind"]]
    schema_errors = list(server_validator(crd).iter_errors(document))
    if verdict == "schema":
        located = [format_path(list(error.absolute_path)) for error in schema_errors]
        assert located, "the CRD schema accepts what the CLI refuses"
        assert any(field.startswith(where) for where in located), (field, located)
    else:
        assert schema_errors == []
        parts: list[str | int] = [
            int(part) if part.isdigit() else part for part in field.replace("[", ".").replace("]", "").split(".")
        ]
        rules = schema_node(openapi_schema(crd), parts).get("x-kubernetes-validations", [])
        assert rules, f"no CEL rule at {field}: the API server would accept what the CLI refuses"


def test_all_errors_are_reported_and_counted() -> None:
    document = edit(JOB, {"spec.workers.replicas": 0, "spec.workload.builtin.task": "mnist", "spec.extra": 1})
    errors = validation_errors(document)
    assert [error.field for error in errors] == ["spec.workload.builtin.task", "spec.workers.replicas", "spec.extra"]
    with pytest.raises(ManifestError) as caught:
        parse_manifest(document, "job.yaml")
    assert _one_line(caught.value).endswith("(and 2 more)")
    assert caught.value.errors == errors


def test_valid_documents_have_no_errors() -> None:
    assert validation_errors(JOB) == []
    assert validation_errors(SERVICE) == []


FILES: list[tuple[str, str | None, str]] = [
    ("missing-file", None, "no such file"),
    ("invalid-yaml", "kind: BigModelJob\nspec: [unclosed\n", "not valid YAML: line 3"),
    ("tab-indented-yaml", "kind: BigModelJob\nspec:\n\tworkload: {}\n", "not valid YAML"),
    ("not-a-mapping", "- apiVersion: bigmodel.dev/v1alpha1\n", "expected a mapping with apiVersion, kind, metadata and spec"),
    ("scalar", "just words\n", "expected a mapping"),
    ("empty-file", "# nothing here\n", "found no documents"),
    ("two-documents", yaml.safe_dump(JOB) + "---\n" + yaml.safe_dump(SERVICE), "found 2 documents"),
]


@pytest.mark.parametrize(("text", "fragment"), [case[1:] for case in FILES], ids=[case[0] for case in FILES])
def test_bad_file(tmp_path: Path, text: str | None, fragment: str) -> None:
    path = tmp_path / "manifest.yaml"
    if text is not None:
        path.write_text(text, encoding="utf-8")
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    assert caught.value.source == str(path)
    assert fragment in caught.value.reason
    assert _one_line(caught.value) == f"{path}: {caught.value.reason}"


def test_one_document_with_separators_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("---\n" + yaml.safe_dump(JOB) + "---\n", encoding="utf-8")
    assert isinstance(load_manifest(path), BigModelJob)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(edit(JOB, {"spec.workers.replicas": "two"})), encoding="utf-8")
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    assert str(caught.value) == f"{path}: spec.workers.replicas: must be a whole number, not 'two'"


GOOD: list[tuple[str, dict[str, Any]]] = [
    ("job-minimal", JOB),
    ("job-gpt", edit(JOB, {"spec.workload.builtin": {"task": "gpt", "gpt": {"heads": 4, "embedDim": 128}}})),
    ("job-causal-lm", edit(JOB, {"spec.workload.builtin": {"task": "causal-lm", "causalLm": CAUSAL_LM | {"contextLength": 256}}})),
    ("job-causal-lm-text-with-options", edit(JOB, {"spec.workload.builtin": {"task": "causal-lm", "causalLm": {"model": "/models/m", "dataset": "s3://data/a.txt?region=eu-west-1"}}})),
    ("job-entrypoint", edit(JOB, {"spec.workload": {"entrypoint": {"function": "mypkg.train:loop", "config": {"lr": 0.1}}}})),
    ("job-command", edit(JOB, {"spec.workload": {"command": ["python", "-m", "mypkg"]}})),
    ("job-quantities", edit(JOB, {"spec.workers.resources": {"cpu": 2, "memory": "512Mi", "gpu": 1}})),
    ("job-checkpoint-volume", edit(JOB, {"spec.checkpoint": {"volumeClaimName": "runs", "storage": "/runs/digits"}})),
    ("job-env-by-reference", edit(JOB, {
        "spec.env": [
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token", "optional": True}}},
            {"name": "DATA_URL", "valueFrom": {"configMapKeyRef": {"name": "data", "key": "url"}}},
            {"name": "EMPTY"},
        ],
        "spec.envFrom": [{"secretRef": {"name": "db"}, "prefix": "DB_"}, {"configMapRef": {"name": "tuning", "optional": True}}],
    })),
    ("job-kueue-queue", edit(JOB, {"spec.queueName": "team-a.gpu"})),
    ("job-volcano", edit(JOB, {"spec.schedulerName": "volcano", "spec.queueName": "research"})),
    ("service-minimal", SERVICE),
    ("service-uri", edit(SERVICE, {"spec.model": {"uri": "gs://bucket/model", "name": "m"}, "spec.replicas.min": 0})),
] + [(path.name, yaml.safe_load(path.read_text(encoding="utf-8"))) for path in sorted(EXAMPLES_DIR.glob("*.yaml"))]


@pytest.mark.parametrize("document", [case[1] for case in GOOD], ids=[case[0] for case in GOOD])
def test_good_manifest_round_trips(document: dict[str, Any]) -> None:
    resource = parse_manifest(document, "manifest.yaml")
    assert type(resource).__name__ == document["kind"]
    assert parse_manifest(resource.to_wire(), "wire") == resource
    assert list(server_validator(load_crds()[document["kind"]]).iter_errors(document)) == []


def test_service_defaults() -> None:
    service = parse_manifest(SERVICE, "service.yaml")
    assert isinstance(service, BigModelService)
    assert service.spec.model.name is None
    assert (service.spec.workers.min_replicas, service.spec.workers.max_replicas) == (1, 4)
    assert service.spec.workers.idle_timeout_seconds == 300
    assert (service.spec.batching.max_batch_size, service.spec.batching.wait_timeout_ms) == (32, 10)
    assert service.spec.replica_resources.cpu == 1.0 and not service.spec.uses_gpu()


def test_fractional_replica_gpu_is_allowed_for_services() -> None:
    service = parse_manifest(edit(SERVICE, {"spec.replicaResources": {"cpu": 0.25, "gpu": 0.5}}), "service.yaml")
    assert isinstance(service, BigModelService)
    assert service.spec.replica_resources.gpu == 0.5 and service.spec.uses_gpu()
