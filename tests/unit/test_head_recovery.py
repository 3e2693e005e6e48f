"""A Ready service loses its Ray head: re-created in place when the cluster's state is in Redis (GCS fault
tolerance), the workers serving meanwhile; rebuilt as a new generation otherwise. Pure decisions."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from bigmodel.api.service import BigModelService, BigModelServiceStatus
from bigmodel.api.wire import GCS_FAULT_TOLERANCE_ANNOTATION
from bigmodel.builders.gcs_fault_tolerance import GcsFaultTolerance
from bigmodel.builders.ray_cluster import head_pod, worker_pod
from bigmodel.reconcile.head_recovery import head_recovery
from bigmodel.reconcile.observed import PodView
from bigmodel.reconcile.plans import Outcome
from bigmodel.reconcile.service import decide_service
from bigmodel.reconcile.service_observed import RayClusterView
from bigmodel.reconcile.service_pass import ServicePlan, cluster_digest
from tests.unit.test_reconcile_service import app, as_pod, deployed_config, make_service, new_selector, nodes, seen

REDIS = GcsFaultTolerance("redis.bigmodel-system.svc:6379")
HEAD = "digits-s0-head"


def ft_pods(service: BigModelService, workers: int = 2, **kw: Any) -> list[PodView]:
    """Generation 0 built with GCS fault tolerance."""
    digest = cluster_digest(service.spec, None)
    pods = [as_pod(head_pod(service, 0, None, REDIS), digest, **kw)]
    return pods + [as_pod(worker_pod(service, 0, i, None, REDIS), digest, **kw) for i in range(workers)]


def ready(service: BigModelService, pods: list[PodView]) -> tuple[BigModelServiceStatus, dict[str, Any]]:
    """The status of the service Ready on generation 0, and the Ray view that made it so."""
    config = deployed_config(service, pods)
    ray = {0: RayClusterView(True, app(config, replicas=("RUNNING", "RUNNING")), nodes(pods))}
    plan = decide_service(service, seen(pods, ray), gcs=REDIS)
    assert plan.status.phase == "Ready"
    return plan.status, ray


def condition(plan: ServicePlan, type_: str) -> tuple[str, str]:
    found = next(c for c in plan.status.conditions if c.type == type_)
    return found.status, found.reason


@pytest.fixture
def serving() -> tuple[BigModelService, list[PodView], dict[str, Any]]:
    service = make_service()
    pods = ft_pods(service)
    status, ray = ready(service, pods)
    return make_service(status), pods, ray


def test_a_failed_head_is_deleted_and_re_created_under_its_name_the_rest_untouched(serving: Any) -> None:
    service, pods, _ = serving
    failed = [replace(pods[0], phase="Failed", ready=False, failure="OOMKilled (exit code 137)"), *pods[1:]]
    clearing = decide_service(service, seen(failed), gcs=REDIS)
    assert clearing.delete_pods == [HEAD], "only the failed head goes: its name is the new one's"
    assert clearing.create == [] and clearing.delete_services == [] and clearing.delete_access == []
    assert new_selector(clearing) is None, "the Service keeps selecting this cluster's proxies"
    assert clearing.status.serving is not None and clearing.status.serving.generation == 0
    assert condition(clearing, "Degraded") == ("True", "HeadRestarting")
    assert "OOMKilled" in next(c.message for c in clearing.status.conditions if c.type == "Degraded")
    assert condition(clearing, "Ready") == ("True", "Serving"), "the workers' proxies answer"
    assert clearing.status.phase == "Ready" and clearing.status.replicas_ready == "2/2"
    assert "ClusterLost" not in [e.reason for e in clearing.events]

    terminating = [replace(pods[0], deleting=True), *pods[1:]]
    waiting = decide_service(make_service(clearing.status), seen(terminating), gcs=REDIS)
    assert waiting.create == [] and waiting.delete_pods == [], "no new head while the old name is taken"
    assert waiting.requeue_after is not None and waiting.requeue_after <= 2

    gone = decide_service(make_service(waiting.status), seen(pods[1:]), gcs=REDIS)
    (new_head,) = gone.create
    assert new_head["kind"] == "Pod" and new_head["metadata"]["name"] == HEAD
    assert new_head["metadata"]["labels"]["bigmodel.dev/generation"] == "0"
    assert new_head["metadata"]["annotations"][GCS_FAULT_TOLERANCE_ANNOTATION] == "redis"
    assert gone.delete_pods == [] and new_selector(gone) is None
    assert [e.reason for e in gone.events] == ["HeadRestarted"]
    assert gone.outcomes == {Outcome.HEAD_RESTARTED: 1}


def test_the_service_stays_degraded_until_the_new_heads_ray_answers(serving: Any) -> None:
    service, pods, ray = serving
    restarted = decide_service(service, seen(pods[1:]), gcs=REDIS)
    starting = decide_service(make_service(restarted.status), seen(pods), gcs=REDIS)
    assert condition(starting, "Degraded") == ("True", "HeadRestarting")
    assert starting.create == [] and starting.ray == [], "nothing is scaled or deployed while Ray cannot say"

    back = decide_service(make_service(starting.status), seen(pods, ray), gcs=REDIS)
    assert condition(back, "Degraded") == ("False", "HeadRecovered")
    assert condition(back, "Ready") == ("True", "Serving") and back.status.phase == "Ready"
    assert back.ray == [], "Serve recovered its application from the GCS: nothing to deploy again"


def test_no_worker_proxy_answering_while_the_head_is_away_is_not_serving(serving: Any) -> None:
    service, pods, _ = serving
    silent = [replace(pod, ready=False) for pod in pods[1:]]
    plan = decide_service(service, seen(silent), gcs=REDIS)
    assert condition(plan, "Ready") == ("False", "NotServing") and plan.status.phase == "Deploying"
    assert [e.reason for e in plan.events] == ["HeadRestarted"], "the head is re-created all the same"


@pytest.mark.parametrize(
    "case", ["built without Redis", "operator without Redis now", "shape changed", "workers gave up"]
)
def test_a_lost_head_rebuilds_the_cluster_when_its_state_cannot_come_back(case: str) -> None:
    service = make_service()
    pods = ft_pods(service)
    gcs: GcsFaultTolerance | None = REDIS
    if case == "built without Redis":
        pods = [replace(p, annotations={k: v for k, v in p.annotations.items() if k != GCS_FAULT_TOLERANCE_ANNOTATION})
                for p in pods]  # fmt: skip
    elif case == "operator without Redis now":
        gcs = None
    elif case == "shape changed":
        service = make_service(image="registry.example/bigmodel-runtime:2")
    else:
        pods = [pods[0], *(replace(p, phase="Failed", failure="Error (exit code 1)") for p in pods[1:])]
    status, _ = ready(make_service(), ft_pods(make_service()))
    lost = decide_service(make_service(status, **service.spec.to_wire()), seen(pods[1:]), gcs=gcs)
    assert "ClusterLost" in [e.reason for e in lost.events]
    selector = new_selector(lost)
    assert selector is not None and selector["bigmodel.dev/generation"] == "1"
    assert lost.status.serving is not None and lost.status.serving.generation == 1


def test_head_recovery_is_decided_from_the_pods_alone() -> None:
    service = make_service()
    pods = ft_pods(service)
    digest = cluster_digest(service.spec, None)
    observed = seen(pods[1:])
    assert head_recovery(observed, 0, HEAD, fault_tolerant=True, digest=digest) == "restart"
    assert head_recovery(observed, 0, HEAD, fault_tolerant=True, digest="other") == "rebuild"
    terminating = seen([replace(pods[0], deleting=True), *pods[1:]])
    assert head_recovery(terminating, 0, HEAD, fault_tolerant=True, digest=digest) == "wait"
    failed = seen([replace(pods[0], phase="Failed"), *pods[1:]])
    assert head_recovery(failed, 0, HEAD, fault_tolerant=True, digest=digest) == "clear"
    assert head_recovery(failed, 0, HEAD, fault_tolerant=False, digest=digest) == "rebuild"
    assert head_recovery(seen(pods[:1]), 0, HEAD, fault_tolerant=True, digest=digest) == "rebuild", "no worker"
