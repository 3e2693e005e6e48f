"""How spec.auth and spec.limits reach the endpoint: the Ray pods' environment, the Serve config, the app's args,
the manifest's validation, and `bigmodel serve` on a service with auth (which stops before Ray starts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from bigmodel.api.manifests import ManifestError, load_manifest
from bigmodel.api.service import DEFAULT_MAX_BODY_BYTES, BigModelService
from bigmodel.api.wire import (
    API_KEYS_ENV,
    MAX_BODY_BYTES_ENV,
    MAX_IN_FLIGHT_ENV,
    PROXY_CALLBACK_ENV,
    PROXY_GUARD_IMPORT_PATH,
    RETRY_AFTER_SECONDS,
    ROUTER_MAX_BACKOFF_ENV,
)
from bigmodel.builders.ray_cluster import head_pod, worker_pod
from bigmodel.builders.serve_app import app_args, serve_deploy_config
from bigmodel.cli import main

MANIFEST: dict[str, Any] = {
    "apiVersion": "bigmodel.dev/v1alpha1",
    "kind": "BigModelService",
    "metadata": {"name": "coder", "namespace": "team", "uid": "0123456789abcdef", "generation": 1},
    "spec": {"model": {"uri": "s3://models/coder"}},
}


def service(**spec: Any) -> BigModelService:
    body = MANIFEST | {"spec": MANIFEST["spec"] | spec}
    return BigModelService.model_validate(body, by_alias=True)


def container_env(pod: dict[str, Any]) -> list[dict[str, Any]]:
    (container,) = pod["spec"]["containers"]
    return container["env"]


def test_every_ray_container_of_a_service_with_auth_gets_the_keys_from_its_secret() -> None:
    guarded = service(auth={"secretName": "coder-keys"}, limits={"maxBodyBytes": 4096})
    for pod in (head_pod(guarded, 0, None), worker_pod(guarded, 0, 1, None)):
        env = container_env(pod)
        assert {"name": API_KEYS_ENV, "valueFrom": {"secretKeyRef": {"name": "coder-keys", "key": "api-keys"}}} in env
        assert {"name": PROXY_CALLBACK_ENV, "value": PROXY_GUARD_IMPORT_PATH} in env
        assert {"name": MAX_BODY_BYTES_ENV, "value": "4096"} in env
    custom = service(auth={"secretName": "coder-keys", "key": "tokens"})
    keys = next(entry for entry in container_env(head_pod(custom, 0, None)) if entry["name"] == API_KEYS_ENV)
    assert keys["valueFrom"]["secretKeyRef"] == {"name": "coder-keys", "key": "tokens"}


def test_without_auth_no_key_variable_and_the_proxy_guard_still_limits_bodies() -> None:
    env = {entry["name"]: entry.get("value") for entry in container_env(head_pod(service(), 0, None))}
    assert API_KEYS_ENV not in env
    assert env[MAX_BODY_BYTES_ENV] == str(DEFAULT_MAX_BODY_BYTES) == str(16 * 1024 * 1024)
    assert float(env[ROUTER_MAX_BACKOFF_ENV]) < 0.5, "Ray's default backoff idles replicas under a queue"


def test_the_proxy_lets_in_the_queue_and_the_room_of_the_most_replicas() -> None:
    # maxBatchSize 8: each replica takes 16 requests at once; 3 replicas at most, 20 more may queue.
    spec = {"replicas": {"min": 1, "max": 3}, "batching": {"maxBatchSize": 8}, "limits": {"maxQueuedRequests": 20}}
    env = {entry["name"]: entry.get("value") for entry in container_env(head_pod(service(**spec), 0, None))}
    assert env[MAX_IN_FLIGHT_ENV] == str(20 + 3 * 16)


def test_the_serve_config_says_whether_auth_is_required_but_holds_no_key() -> None:
    guarded = service(
        auth={"secretName": "coder-keys"},
        limits={"maxBodyBytes": 2048, "timeoutSeconds": 7.5, "maxQueuedRequests": 12},
    )
    args = app_args("coder", guarded.spec, "s3://models/coder", "v1")
    assert (args.auth_required, args.max_body_bytes, args.timeout_s) == (True, 2048, 7.5)
    config = serve_deploy_config("coder", guarded.spec, args)
    assert "coder-keys" not in str(config) and API_KEYS_ENV not in str(config)
    (deployment,) = config["applications"][0]["deployments"]
    assert deployment["max_queued_requests"] == 12
    assert deployment["backpressure_config"] == {"status_code": 503, "retry_after_s": RETRY_AFTER_SECONDS}
    assert config["http_options"]["request_timeout_s"] == 7.5
    assert deployment["graceful_shutdown_timeout_s"] == 7.5, "a stopping replica cuts requests short of the timeout"
    assert app_args("coder", service().spec, "s3://models/coder", "v1").auth_required is False


def test_the_serve_config_is_one_ray_accepts() -> None:
    from ray.serve.schema import ServeDeploySchema

    guarded = service(auth={"secretName": "coder-keys"})
    ServeDeploySchema.model_validate(
        serve_deploy_config("coder", guarded.spec, app_args("coder", guarded.spec, "/m", "v"))
    )


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        ({"limits": {"maxBodyBytes": 10}}, "spec.limits.maxBodyBytes"),
        ({"limits": {"timeoutSeconds": 0}}, "spec.limits.timeoutSeconds"),
        ({"limits": {"maxQueuedRequests": 0}}, "spec.limits.maxQueuedRequests"),
        ({"auth": {}}, "spec.auth.secretName"),
        ({"auth": {"secretName": "Not_A_Name"}}, "spec.auth.secretName"),
        ({"auth": {"secretName": "k", "key": "a/b"}}, "spec.auth.key"),
    ],
)
def test_invalid_guards_name_their_camel_case_field(tmp_path: Path, spec: dict[str, Any], path: str) -> None:
    manifest = tmp_path / "service.yaml"
    manifest.write_text(yaml.safe_dump(MANIFEST | {"spec": MANIFEST["spec"] | spec}))
    with pytest.raises(ManifestError) as caught:
        load_manifest(manifest)
    assert f": {path}: " in str(caught.value), str(caught.value)


def test_serve_with_auth_and_no_keys_in_the_environment_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "service.yaml"
    manifest.write_text(yaml.safe_dump(MANIFEST | {"spec": MANIFEST["spec"] | {"auth": {"secretName": "keys"}}}))
    for value in (None, " \n\n"):
        if value is None:
            monkeypatch.delenv(API_KEYS_ENV, raising=False)
        else:
            monkeypatch.setenv(API_KEYS_ENV, value)
        assert main(["serve", str(manifest)]) == 2
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(lines) == 1 and f"spec.auth: this service requires API keys; set {API_KEYS_ENV}" in lines[0], lines
