"""What a BigModelService's cluster is made of for redundant serving: a Serve proxy on every node, the Service over
all of them, and GCS fault tolerance on Redis; checked as plain dicts."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from bigmodel.api import wire
from bigmodel.api.job import BigModelJob, BigModelJobStatus
from bigmodel.api.manifests import load_manifest
from bigmodel.api.service import BigModelService, BigModelServiceStatus
from bigmodel.builders import naming
from bigmodel.builders.gcs_fault_tolerance import GcsFaultTolerance, storage_namespace
from bigmodel.builders.network_policy import OperatorPeer
from bigmodel.builders.ray_cluster import head_pod, worker_pod
from bigmodel.builders.serve_app import app_args, proxy_in_flight_limit, serve_deploy_config
from bigmodel.builders.serving_env import proxy_env
from bigmodel.builders.serving_service import serving_selector, serving_service
from bigmodel.reconcile.cluster import Clusters
from bigmodel.reconcile.observed import ClusterObservation, PodView
from bigmodel.reconcile.plans import Plan

ROOT = Path(__file__).resolve().parents[2]
UID = "6f1c2d3e-4a5b-4c6d-8e9f-0a1b2c3d4e5f"
KUBERNETES_VERSION = "1.37"
REDIS = GcsFaultTolerance("redis.bigmodel-system.svc:6379")


def example(file: str) -> Any:
    owner = load_manifest(ROOT / "examples" / file)
    owner.metadata.namespace = "research"
    owner.metadata.uid = UID
    owner.metadata.generation = 2
    return owner


@pytest.fixture
def service() -> BigModelService:
    found = example("service-uri.yaml")
    assert isinstance(found, BigModelService)
    return found


def container(pod: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod["spec"]["containers"]
    return only


def env(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container(pod)["env"]}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def cluster_objects(owner: Any, generation: int, gcs: GcsFaultTolerance | None = None) -> list[dict[str, Any]]:
    status = BigModelServiceStatus() if isinstance(owner, BigModelService) else BigModelJobStatus()
    plan: Plan[Any] = Plan(status=status)
    seen = ClusterObservation(now=datetime.now(timezone.utc))
    Clusters(owner, seen, plan, claim=None, stamp={}, operator=OperatorPeer(), gcs=gcs).build(generation, 2)
    return plan.create


# A proxy on every node, all behind the Service


def test_serve_runs_a_proxy_on_every_node_and_each_queues_on_its_own(service: BigModelService) -> None:
    config = serve_deploy_config("gpt-small", service.spec, app_args("gpt-small", service.spec, "s3://m", "v1"))
    assert config["proxy_location"] == "EveryNode"
    assert config["http_options"]["port"] == wire.SERVE_PORT
    deployment = config["applications"][0]["deployments"][0]
    assert deployment["max_queued_requests"] == service.spec.limits.max_queued_requests, "per proxy, as Ray counts it"
    # One proxy may have every replica to itself while the others idle: its guard lets in its queue and all their room.
    limit = proxy_in_flight_limit(service.spec)
    assert (
        limit
        == service.spec.limits.max_queued_requests + service.spec.replicas.max * deployment["max_ongoing_requests"]
    )
    assert proxy_env(service.spec)[wire.MAX_IN_FLIGHT_ENV] == str(limit)


def test_the_service_selects_every_proxy_of_the_serving_cluster_and_nothing_else(service: BigModelService) -> None:
    selector = serving_service(service, 3)["spec"]["selector"]
    assert selector == serving_selector("gpt-small", 3)
    assert wire.ROLE_LABEL not in selector, "workers' proxies take traffic too"
    head, worker = head_pod(service, 3, None), worker_pod(service, 3, 0, None)
    assert selects(selector, head["metadata"]["labels"]) and selects(selector, worker["metadata"]["labels"])
    assert not selects(selector, worker_pod(service, 4, 0, None)["metadata"]["labels"]), "another generation"
    assert serving_service(service, 3)["spec"]["ports"][0]["targetPort"] == "serve"


def test_every_service_pod_declares_the_serve_port_and_is_ready_when_its_proxy_is(service: BigModelService) -> None:
    for pod in (head_pod(service, 1, None), worker_pod(service, 1, 0, None)):
        main = container(pod)
        assert {"name": "serve", "containerPort": wire.SERVE_PORT, "protocol": "TCP"} in main["ports"]
        readiness = main["readinessProbe"]
        assert readiness["httpGet"] == {"path": "/-/healthz", "port": wire.SERVE_PORT, "scheme": "HTTP"}
        # A proxy that died is out of the Service within ~6 s; Ray's own health keeps the pod alive meanwhile.
        assert readiness["periodSeconds"] * readiness["failureThreshold"] <= 6
        assert main["livenessProbe"]["httpGet"]["path"] in ("/api/gcs_healthz", "/api/local_raylet_healthz")
        assert pod["metadata"]["labels"][wire.SERVE_PROXY_LABEL] == "true"
    worker = env(worker_pod(service, 1, 0, None))
    assert worker[wire.SERVE_WORKER_PROXY_PORT_ENV]["value"] == str(wire.SERVE_PORT)


def test_a_jobs_pods_keep_rays_own_readiness_and_no_proxy() -> None:
    job = example("digits.yaml")
    assert isinstance(job, BigModelJob)
    worker = worker_pod(job, 1, 0, None)
    assert "ports" not in container(worker)
    assert container(worker)["readinessProbe"]["httpGet"]["path"] == "/api/local_raylet_healthz"
    assert wire.SERVE_PROXY_LABEL not in worker["metadata"]["labels"]
    assert wire.SERVE_WORKER_PROXY_PORT_ENV not in env(worker)


# GCS fault tolerance


def test_without_redis_a_service_cluster_keeps_its_state_in_the_heads_memory(service: BigModelService) -> None:
    objects = cluster_objects(service, 1)
    assert [o["metadata"]["name"] for o in objects if o["kind"] == "Secret"] == ["gpt-small-s1-ray-token"]
    for pod in (o for o in objects if o["kind"] == "Pod"):
        assert not set(env(pod)) & {wire.RAY_REDIS_ADDRESS_ENV, wire.RAY_GCS_RECONNECT_TIMEOUT_ENV}
        assert wire.GCS_FAULT_TOLERANCE_ANNOTATION not in pod["metadata"].get("annotations", {})


def test_with_redis_the_head_keeps_the_clusters_state_there_and_never_holds_the_password(
    service: BigModelService,
) -> None:
    objects = cluster_objects(service, 1, REDIS)
    secret = next(o for o in objects if o["metadata"]["name"] == "gpt-small-s1-gcs-redis")
    assert secret["kind"] == "Secret" and "data" not in secret, "the controller fills it; the plan never holds it"
    assert secret["metadata"]["ownerReferences"][0]["uid"] == UID
    head = next(o for o in objects if o["kind"] == "Pod" and o["metadata"]["name"] == "gpt-small-s1-head")
    variables = env(head)
    assert variables[wire.RAY_REDIS_ADDRESS_ENV]["value"] == REDIS.redis_address
    assert variables[wire.REDIS_PASSWORD_ENV] == {
        "name": wire.REDIS_PASSWORD_ENV,
        "valueFrom": {"secretKeyRef": {"name": "gpt-small-s1-gcs-redis", "key": "password"}},
    }
    assert variables[wire.RAY_STORAGE_NAMESPACE_ENV]["value"] == f"{UID}-1"
    # `ray start --head` takes the password as a flag only: the kubelet expands the reference, the spec has none.
    assert container(head)["command"][-1] == "--redis-password=$(BIGMODEL_REDIS_PASSWORD)"
    assert wire.RAY_GCS_RECONNECT_TIMEOUT_ENV not in variables
    assert head["metadata"]["annotations"][wire.GCS_FAULT_TOLERANCE_ANNOTATION] == "redis"
    for worker in (o for o in objects if o["kind"] == "Pod" and o is not head):
        variables = env(worker)
        assert variables[wire.RAY_GCS_RECONNECT_TIMEOUT_ENV]["value"] == "600"
        assert wire.RAY_REDIS_ADDRESS_ENV not in variables and wire.REDIS_PASSWORD_ENV not in variables
        assert worker["metadata"]["annotations"][wire.GCS_FAULT_TOLERANCE_ANNOTATION] == "redis"
    for item in objects:
        kubernetes_validate.validate(item, KUBERNETES_VERSION, strict=True)


def test_each_cluster_has_its_own_state_in_redis_and_a_restarted_head_finds_it(service: BigModelService) -> None:
    assert storage_namespace(service, 1) == storage_namespace(service, 1)
    assert storage_namespace(service, 1) != storage_namespace(service, 2)
    later = service.model_copy(deep=True)
    later.metadata.uid = "0b9f1d7e-6c5b-4a39-8e2f-1d0c9b8a7f6e"
    assert storage_namespace(later, 1) != storage_namespace(service, 1), "a later service of the same name"
    assert "@" not in storage_namespace(service, 1), "Ray refuses its key separator in the namespace"


def test_jobs_never_get_gcs_fault_tolerance() -> None:
    """A job's driver runs on its head: the run dies with it whatever the GCS keeps."""
    job = example("digits.yaml")
    objects = cluster_objects(job, 1, REDIS)
    assert not any(o["metadata"]["name"].endswith("-gcs-redis") for o in objects)
    for pod in (o for o in objects if o["kind"] == "Pod"):
        assert wire.RAY_REDIS_ADDRESS_ENV not in env(pod) and wire.RAY_GCS_RECONNECT_TIMEOUT_ENV not in env(pod)


def test_a_removed_fault_tolerant_cluster_takes_its_redis_secret_with_it(service: BigModelService) -> None:
    pods = [PodView.from_object(o | {"status": {"phase": "Running"}}) for o in cluster_objects(service, 1, REDIS)
            if o["kind"] == "Pod"]  # fmt: skip
    plan: Plan[Any] = Plan(status=BigModelServiceStatus())
    seen = ClusterObservation(now=datetime.now(timezone.utc), pods=pods)
    Clusters(service, seen, plan, claim=None, stamp={}, operator=OperatorPeer()).remove(1)
    assert ("Secret", naming.gcs_redis_secret_name("gpt-small", 1)) in plan.delete_access
