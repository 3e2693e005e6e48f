"""Secrets and config by reference: in the pods only, never in what Ray's job API shows; and which service accounts a
spec may run as."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bigmodel.api.common import EnvFromSource
from bigmodel.api.job import BigModelJob, BigModelJobSpec
from bigmodel.api.service import BigModelService
from bigmodel.api.wire import MODEL_SPEC_ANNOTATION, RUN_SPEC_ANNOTATION
from bigmodel.builders.ray_cluster import head_pod, worker_pod
from bigmodel.builders.ray_job import ray_job_submission
from bigmodel.controller.job_kind import JobKind
from bigmodel.controller.service_kind import ServiceKind
from bigmodel.controller.settings import OperatorSettings
from bigmodel.reconcile.job import spec_digests
from bigmodel.reconcile.service_pass import cluster_digest
from bigmodel.runtime.driver import local_environment

LITERAL = "literal-value-7f3a"
ENV: list[dict[str, Any]] = [
    {"name": "PLAIN_SETTING", "value": LITERAL},
    {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-credentials", "key": "token"}}},
    {"name": "DATA_URL", "valueFrom": {"configMapKeyRef": {"name": "data-config", "key": "url", "optional": True}}},
]
ENV_FROM: list[dict[str, Any]] = [{"secretRef": {"name": "db-credentials"}, "prefix": "DB_"}]


def job(**spec: Any) -> BigModelJob:
    return BigModelJob.model_validate(
        {
            "apiVersion": "bigmodel.dev/v1alpha1",
            "kind": "BigModelJob",
            "metadata": {"name": "demo", "namespace": "research", "uid": "0d5c7a1e-1111-2222-3333-444455556666"},
            "spec": {
                "workload": {"builtin": {"task": "digits"}},
                "checkpoint": {"storage": "s3://runs/demo"},
                "runtimeEnv": {"pip": ["einops"], "env_vars": {"OMP_NUM_THREADS": "1"}},
                **spec,
            },
        },
        by_alias=True,
    )


def test_the_ray_submission_carries_nothing_of_env_or_env_from() -> None:
    submission = ray_job_submission(job(env=ENV, envFrom=ENV_FROM), 1)
    body = json.dumps(submission)
    for secret in (LITERAL, "PLAIN_SETTING", "HF_TOKEN", "hf-credentials", "token", "DATA_URL", "data-config"):
        assert secret not in body, secret
    assert "db-credentials" not in body and "DB_" not in body
    # The user's own runtimeEnv still travels: it is Ray's, and documented as visible to Ray's job API.
    assert submission["runtime_env"]["pip"] == ["einops"]
    assert submission["runtime_env"]["env_vars"]["OMP_NUM_THREADS"] == "1"


def test_the_driver_gets_the_rest_of_the_spec() -> None:
    with_env, without = job(env=ENV, envFrom=ENV_FROM), job()
    manifest = ray_job_submission(with_env, 1)["runtime_env"]["env_vars"]["BIGMODEL_JOB_MANIFEST"]
    driven = BigModelJob.model_validate(json.loads(manifest), by_alias=True)
    assert driven.spec.env == [] and driven.spec.env_from == []
    assert driven.spec == without.spec
    assert (driven.metadata.name, driven.metadata.uid) == (with_env.metadata.name, with_env.metadata.uid)


def test_a_services_pods_carry_env_and_env_from_too() -> None:
    service = BigModelService.model_validate(
        {
            "apiVersion": "bigmodel.dev/v1alpha1",
            "kind": "BigModelService",
            "metadata": {"name": "demo", "namespace": "research", "uid": "u"},
            "spec": {"model": {"uri": "s3://runs/demo/model"}, "env": ENV, "envFrom": ENV_FROM},
        },
        by_alias=True,
    )
    for pod in (head_pod(service, 1, None), worker_pod(service, 1, 0, None)):
        container = pod["spec"]["containers"][0]
        assert all(entry in container["env"] for entry in ENV) and container["envFrom"] == ENV_FROM


def spec_of(**spec: Any) -> BigModelJobSpec:
    return job(**spec).spec


def test_locally_literal_values_apply_and_references_come_from_the_users_environment() -> None:
    env, notes = local_environment(spec_of(env=ENV), {"HF_TOKEN": "from-my-shell"})
    assert env == {"PLAIN_SETTING": LITERAL, "HF_TOKEN": "from-my-shell"}
    assert notes == [
        "spec.env[2]: DATA_URL comes from ConfigMap 'data-config' key 'url' in a cluster; it is not set in your "
        "environment, so this run goes without it"
    ]


def test_locally_env_from_is_one_note_each() -> None:
    env, notes = local_environment(spec_of(envFrom=ENV_FROM), {"DB_PASSWORD": "x"})
    assert env == {}
    assert notes == [
        "spec.envFrom[0]: the keys of Secret 'db-credentials' are read in a cluster only; this run sees your own "
        "environment"
    ]


def test_a_job_with_no_env_adds_nothing_and_says_nothing() -> None:
    assert local_environment(spec_of(), {"HF_TOKEN": "x"}) == ({}, [])


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, []),
        ({"BIGMODEL_ALLOWED_SERVICE_ACCOUNTS": ""}, []),
        ({"BIGMODEL_ALLOWED_SERVICE_ACCOUNTS": "trainer"}, ["trainer"]),
        ({"BIGMODEL_ALLOWED_SERVICE_ACCOUNTS": " trainer, server ,,"}, ["trainer", "server"]),
    ],
)
def test_allowed_service_accounts_from_the_environment(environ: dict[str, str], expected: list[str]) -> None:
    assert OperatorSettings.from_env(environ).allowed_service_accounts == expected


@pytest.mark.parametrize(
    ("allowed", "account", "allowed_here"),
    [([], "anything", True), (["trainer"], "trainer", True), (["trainer"], None, True), (["trainer"], "admin", False)],
)
def test_a_spec_may_name_only_an_allowed_service_account(
    allowed: list[str], account: str | None, allowed_here: bool
) -> None:
    settings = OperatorSettings(allowed_service_accounts=allowed, default_storage="s3://runs")
    job_body = job(serviceAccountName=account).model_dump(by_alias=True, exclude_none=True, mode="json")
    service_body = {
        "apiVersion": "bigmodel.dev/v1alpha1",
        "kind": "BigModelService",
        "metadata": {"name": "demo", "namespace": "research", "uid": "u"},
        "spec": {"model": {"uri": "s3://runs/demo/model"}, **({"serviceAccountName": account} if account else {})},
    }
    for kind, body in ((JobKind(), job_body), (ServiceKind(), service_body)):
        owner, errors = kind.parse(body, settings)
        if allowed_here:
            assert owner is not None and errors == []
        else:
            assert owner is None
            assert errors == ["spec.serviceAccountName: 'admin' is not allowed by this operator (allowed: trainer)"]


def test_env_from_shapes_the_cluster_and_its_absence_changes_no_digest() -> None:
    plain, with_refs = job(), job(envFrom=ENV_FROM)
    assert spec_digests(plain)[RUN_SPEC_ANNOTATION] != spec_digests(with_refs)[RUN_SPEC_ANNOTATION]
    assert spec_digests(plain)[MODEL_SPEC_ANNOTATION] == spec_digests(with_refs)[MODEL_SPEC_ANNOTATION]
    service = BigModelService.model_validate(
        {
            "apiVersion": "bigmodel.dev/v1alpha1",
            "kind": "BigModelService",
            "metadata": {"name": "demo"},
            "spec": {"model": {"uri": "s3://runs/demo/model"}},
        },
        by_alias=True,
    )
    before = cluster_digest(service.spec, None)
    service.spec.env_from = [EnvFromSource.model_validate(source) for source in ENV_FROM]
    assert cluster_digest(service.spec, None) != before
