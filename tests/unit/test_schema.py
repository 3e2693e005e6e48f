"""Custom resources checked against the project's CRD schemas as a real API server checks them: 422 Invalid with
its causes, unknown fields pruned, defaults filled in, CEL rules evaluated."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.support.apiserver import StatusError, Store, crd_resources
from tests.support.schema import FieldError, StructuralSchema, go_value
from tests.unit.crd_schema import load_crds

CRDS = load_crds()
(JOBS,) = crd_resources(CRDS["BigModelJob"])
(SERVICES,) = crd_resources(CRDS["BigModelService"])
UNCHECKED = (
    '<nil>: Invalid value: "null": some validation rules were not checked because the object was invalid; '
    "correct the existing errors to complete validation"
)


def job(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "j"}, "spec": {"workload": {"builtin": {"task": "digits"}}, **spec}}


def service(**model: Any) -> dict[str, Any]:
    return {"metadata": {"name": "s"}, "spec": {"model": model or {"uri": "s3://models/digits"}}}


@pytest.fixture()
def store() -> Store:
    return Store([JOBS, SERVICES])


def invalid(call: Any, *args: Any) -> tuple[str, list[dict[str, str]]]:
    """The message and causes of the 422 the call gets."""
    with pytest.raises(StatusError) as error:
        call(*args)
    status = error.value.status()
    assert (status["code"], status["reason"]) == (422, "Invalid"), status
    return status["message"], status["details"]["causes"]


def test_a_bad_value_is_422_invalid_with_a_cause_per_field(store: Store) -> None:
    message, causes = invalid(store.create, JOBS, "default", job(workers={"replicas": 0}))
    assert message == (
        'BigModelJob.bigmodel.dev "j" is invalid: spec.workers.replicas: Invalid value: 0: '
        "spec.workers.replicas in body should be greater than or equal to 1"
    )
    assert causes == [
        {
            "reason": "FieldValueInvalid",
            "field": "spec.workers.replicas",
            "message": "Invalid value: 0: spec.workers.replicas in body should be greater than or equal to 1",
        }
    ]
    assert store.list(JOBS) == []


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            {"workers": {"replicas": "two"}},
            'spec.workers.replicas: Invalid value: "string": spec.workers.replicas in body must be of type integer: '
            '"string"',
        ),
        (
            {"workload": {"builtin": {"task": "resnet"}}},
            'spec.workload.builtin.task: Unsupported value: "resnet": supported values: "digits", "gpt", "causal-lm"',
        ),
        (
            {"workload": {"builtin": {"task": "digits", "learningRate": 0}}},
            "spec.workload.builtin.learningRate: Invalid value: 0: spec.workload.builtin.learningRate in body should be "
            "greater than 0",
        ),
        (
            {"env": [{"name": ""}]},
            'spec.env[0].name: Invalid value: "": spec.env[0].name in body should be at least 1 chars long',
        ),
        (
            {"env": [{"name": "1x"}]},
            "spec.env[0].name: Invalid value: \"1x\": spec.env[0].name in body should match '^[-._a-zA-Z][-._a-zA-Z0-9]*$'",
        ),
        (
            {"workload": {"command": []}},
            "spec.workload.command: Invalid value: 0: spec.workload.command in body should have at least 1 items",
        ),
        (
            {"workload": {"builtin": {"task": "gpt"}, "command": ["x"]}},
            "spec.workload: Too many: 2: must have at most 1 items",
        ),
        (
            {"workers": {"resources": {"cpu": True}}},
            'spec.workers.resources.cpu: Invalid value: "boolean": spec.workers.resources.cpu in body must be of type '
            'integer,string: "boolean"',
        ),
        (
            {"workers": {"resources": {"memory": "lots"}}},
            'spec.workers.resources.memory: Invalid value: "lots": spec.workers.resources.memory in body should match ',
        ),
        ({"workload": None}, "spec.workload: Required value"),
    ],
)
def test_each_keyword_in_a_real_servers_words(store: Store, spec: dict[str, Any], expected: str) -> None:
    message, _ = invalid(store.create, JOBS, "default", job(**spec))
    assert expected in message


def test_blocking_errors_leave_the_cel_rules_unchecked(store: Store) -> None:
    message, causes = invalid(store.create, JOBS, "default", {"metadata": {"name": "j"}, "spec": {}})
    assert message == f'BigModelJob.bigmodel.dev "j" is invalid: [spec.workload: Required value, {UNCHECKED}]'
    assert causes[0] == {"reason": "FieldValueRequired", "field": "spec.workload", "message": "Required value"}
    assert causes[1]["field"] == "<nil>"


def test_cel_rules_are_evaluated(store: Store) -> None:
    gpt = {"builtin": {"task": "gpt", "gpt": {"embedDim": 65, "heads": 2}}}
    message, causes = invalid(store.create, JOBS, "default", job(workload=gpt))
    assert message.endswith('spec.workload.builtin.gpt: Invalid value: "object": embedDim must be a multiple of heads')
    assert causes == [
        {
            "reason": "FieldValueInvalid",
            "field": "spec.workload.builtin.gpt",
            "message": 'Invalid value: "object": embedDim must be a multiple of heads',
        }
    ]
    message, _ = invalid(
        store.create,
        SERVICES,
        "default",
        {**service(), "spec": {"model": {"uri": "s3://m"}, "replicas": {"min": 5, "max": 4}}},
    )
    assert message.endswith('spec.replicas: Invalid value: "object": min must not exceed max')
    store.create(JOBS, "default", job(checkpoint={"volumeClaimName": "pvc", "storage": "/ckpt"}))
    message, _ = invalid(
        store.create, JOBS, "default", {**job(checkpoint={"volumeClaimName": "pvc"}), "metadata": {"name": "k"}}
    )
    assert "volumeClaimName needs storage to be the absolute path" in message


def test_the_causal_lm_rules_are_evaluated(store: Store) -> None:
    options = {"model": "s3://models/tiny", "dataset": "s3://data/docs.jsonl?region=eu-west-1"}
    good = job(workload={"builtin": {"task": "causal-lm", "causalLm": options}})
    store.create(JOBS, "default", {**good, "metadata": {"name": "good"}})
    message, _ = invalid(store.create, JOBS, "default", job(workload={"builtin": {"task": "causal-lm"}}))
    assert message.endswith(
        'spec.workload.builtin: Invalid value: "object": task causal-lm needs causalLm options (model and dataset)'
    )
    csv = {"builtin": {"task": "causal-lm", "causalLm": options | {"dataset": "s3://data/docs.csv"}}}
    message, _ = invalid(store.create, JOBS, "default", job(workload=csv))
    assert message.endswith(
        'spec.workload.builtin.causalLm.dataset: Invalid value: "string": must be a .txt or .jsonl file'
    )
    mismatched = {"builtin": {"task": "gpt", "causalLm": options}}
    message, _ = invalid(store.create, JOBS, "default", job(workload=mismatched))
    assert message.endswith('spec.workload.builtin: Invalid value: "object": task options must match the task')


def test_one_of_and_its_rule_both_speak(store: Store) -> None:
    message, _ = invalid(store.create, SERVICES, "default", service(name="m"))
    assert (
        'spec.model: Invalid value: "object": spec.model in body must validate one and only one schema (oneOf)'
        in message
    )
    assert 'spec.model: Invalid value: "object": set exactly one of jobName or uri' in message
    message, _ = invalid(store.create, SERVICES, "default", service(uri="s3://m", name="x" * 64))
    assert "spec.model.name: Too long: may not be more than 63 bytes" in message


def test_unknown_fields_are_pruned_and_defaults_filled_in(store: Store) -> None:
    body = job(
        bogus=1,
        workers={"replicas": 2, "extra": "x", "affinity": {"anything": {"goes": True}}},
        runtimeEnv={"pip": ["x"]},
        workload={"entrypoint": {"function": "m:f", "config": {"free": [1]}}},
    )
    created = store.create(JOBS, "default", {**body, "top": "level", "apiVersion": "sent", "kind": "Sent"})
    spec = created["spec"]
    assert "top" not in created and "bogus" not in spec and "extra" not in spec["workers"]
    assert spec["workers"]["affinity"] == {"anything": {"goes": True}}  # x-kubernetes-preserve-unknown-fields
    assert spec["runtimeEnv"] == {"pip": ["x"]} and spec["workload"]["entrypoint"]["config"] == {"free": [1]}
    assert spec["image"] == "ghcr.io/bigmodel-operator/runtime:0.1.0" and spec["cleanPodPolicy"] == "All"
    assert spec["workers"]["replicas"] == 2 and "resources" not in spec["workers"]  # no default for the object
    assert "head" not in spec  # defaults only inside objects that are there
    assert (created["apiVersion"], created["kind"]) == ("bigmodel.dev/v1alpha1", "BigModelJob")


def test_status_writes_are_pruned_defaulted_and_validated(store: Store) -> None:
    store.create(JOBS, "default", job())
    written = store.patch(
        JOBS,
        "default",
        "j",
        {"status": {"phase": "Running", "mine": 1, "message": None, "modelUri": None}},
        subresource="status",
    )
    status = written["status"]
    assert status["phase"] == "Running" and "mine" not in status and "modelUri" not in status
    assert status["message"] == "" and status["workersReady"] == "0/0"  # null and absent both get the default
    message, _ = invalid(store.patch, JOBS, "default", "j", {"status": {"phase": "Bogus"}}, False, "status")
    assert 'status.phase: Unsupported value: "Bogus": supported values: "Pending"' in message
    ready = {"type": "Ready", "status": "True"}
    message, _ = invalid(store.patch, JOBS, "default", "j", {"status": {"conditions": [ready, ready]}}, False, "status")
    assert 'status.conditions[1]: Duplicate value: map[string]interface {}{"type":"Ready"}' in message
    message, _ = invalid(store.patch, JOBS, "default", "j", {"status": {"startTime": "yesterday"}}, False, "status")
    assert 'status.startTime: Invalid value: "yesterday": status.startTime in body must be of type date-time' in message
    assert store.get(JOBS, "default", "j")["status"] == status


def test_updates_are_checked_too(store: Store) -> None:
    created = store.create(JOBS, "default", job())
    invalid(store.patch, JOBS, "default", "j", {"spec": {"workers": {"replicas": 0}}})
    invalid(store.replace, JOBS, "default", "j", {**created, "spec": {}})
    invalid(store.patch, JOBS, "default", "j", [{"op": "remove", "path": "/spec/workload"}], True)
    assert store.get(JOBS, "default", "j") is created
    assert store.patch(JOBS, "default", "j", {"spec": {"workers": {}}})["spec"]["workers"] == {"replicas": 1}


# The validator on schemas of its own: keywords the project's CRDs do not use, and ratcheting.

NULLABLE = {
    "type": "object",
    "properties": {
        "maybe": {"type": "string", "nullable": True},
        "never": {"type": "string"},
        "listed": {"type": "array", "items": {"type": "integer"}, "maxItems": 1, "x-kubernetes-list-type": "set"},
        "labels": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 2}},
        "free": {"type": "object", "additionalProperties": True},
    },
}


def test_nullable_additional_properties_and_sets() -> None:
    schema = StructuralSchema(NULLABLE)
    admitted, errors = schema.admit({"maybe": None, "never": None, "free": {"x": {"y": 1}}, "labels": {"a": "ok"}})
    assert admitted == {"maybe": None, "free": {"x": {"y": 1}}, "labels": {"a": "ok"}} and errors == []
    _, errors = schema.admit({"labels": {"a": "long"}, "listed": [1, 1]})
    assert [str(error) for error in errors] == [
        "labels.a: Too long: may not be more than 2 bytes",
        "listed: Too many: 2: must have at most 1 items",
        "listed[1]: Duplicate value: 1",
        str(FieldError("FieldValueInvalid", "<nil>", None, errors[-1].detail)),
    ]


def test_unchanged_invalid_values_are_ratcheted() -> None:
    schema = StructuralSchema(NULLABLE)
    old = {"labels": {"a": "long"}}
    assert schema.admit(copy.deepcopy(old), old)[1] == []  # valid by the rules of its time: not refused again
    assert schema.admit({"labels": {"a": "long", "b": "xyz"}}, old)[1][0].field == "labels.b"


def test_values_print_as_go_does() -> None:
    assert [go_value(v) for v in ("x", 1, 0.5, True, None)] == ['"x"', "1", "0.5", "true", '"null"']
