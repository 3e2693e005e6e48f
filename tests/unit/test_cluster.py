"""The Ray-cluster lifecycle both kinds share (reconcile/cluster.py): a plain observation in, the plan's changes out."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from bigmodel.api.job import BigModelJob, BigModelJobStatus
from bigmodel.api.service import BigModelService
from bigmodel.builders.network_policy import OperatorPeer
from bigmodel.builders.pod import ClaimMount
from bigmodel.reconcile.cluster import Clusters
from bigmodel.reconcile.observed import ClusterObservation, PodView, ServiceView
from bigmodel.reconcile.plans import Outcome, Plan

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
META = {"namespace": "team", "uid": "0123456789abcdef", "generation": 4}
STAMP = {"bigmodel.dev/run-spec": "abc"}
CLAIM = ClaimMount("checkpoints", "shared", "/checkpoints/demo", read_only=False)


def job() -> BigModelJob:
    spec = {"workload": {"builtin": {"task": "digits"}}, "workers": {"replicas": 2}}
    return BigModelJob.model_validate({"metadata": {"name": "demo", **META}, "spec": spec}, by_alias=True)


def service() -> BigModelService:
    spec = {"model": {"uri": "/models/demo"}}
    return BigModelService.model_validate({"metadata": {"name": "demo", **META}, "spec": spec}, by_alias=True)


def pod(name: str, generation: int, role: str = "worker", index: int | None = 0, **state: Any) -> PodView:
    defaults: dict[str, Any] = {
        "phase": "Running",
        "ready": True,
        "deleting": False,
        "pod_ip": "10.0.0.1",
        "failure": "",
    }
    return PodView(name, generation, role, index if role == "worker" else None, **(defaults | state))


def clusters(
    pods: list[PodView], services: list[ServiceView] | None = None, owner: BigModelJob | BigModelService | None = None
) -> tuple[Clusters, Plan[Any]]:
    plan: Plan[Any] = Plan(status=BigModelJobStatus())
    seen = ClusterObservation(now=NOW, pods=pods, services=services or [])
    return Clusters(owner or job(), seen, plan, claim=CLAIM, stamp=STAMP, operator=OperatorPeer()), plan


@pytest.mark.parametrize(("owner", "prefix"), [(job(), "demo-g3"), (service(), "demo-s3")])
def test_a_cluster_is_built_policy_and_token_first_stamped_and_with_its_volume(
    owner: BigModelJob | BigModelService, prefix: str
) -> None:
    cluster, plan = clusters([], owner=owner)
    cluster.build(3, workers=2)
    assert [(o["kind"], o["metadata"]["name"]) for o in plan.create] == [
        ("NetworkPolicy", prefix),
        ("Secret", f"{prefix}-ray-token"),
        ("Service", f"{prefix}-head"),
        ("Pod", f"{prefix}-head"),
        ("Pod", f"{prefix}-w0"),
        ("Pod", f"{prefix}-w1"),
    ]
    for obj in plan.create:
        assert obj["metadata"]["annotations"] == {"bigmodel.dev/spec-generation": "4", **STAMP}
    for pod_object in plan.create[3:]:
        mounts = pod_object["spec"]["containers"][0]["volumeMounts"]
        assert {"name": "checkpoints", "mountPath": "/checkpoints/demo", "readOnly": False} in mounts


def test_health_tells_a_running_cluster_from_an_absent_a_lost_and_a_draining_one() -> None:
    failed_head = pod("demo-g2-head", 2, "head", phase="Failed", failure="OOMKilled (exit code 137)")
    cluster, _ = clusters([
        pod("demo-g1-head", 1, "head"), pod("demo-g1-w0", 1),
        failed_head, pod("demo-g2-w0", 2),
        pod("demo-g3-w0", 3),
        pod("demo-g4-head", 4, "head", deleting=True), pod("demo-g4-w0", 4, deleting=True),
    ])  # fmt: skip
    assert cluster.health(1).state == "up" and cluster.health(1).head is not None
    assert (cluster.health(2).state, cluster.health(2).why) == ("lost", "head pod failed: OOMKilled (exit code 137)")
    assert (cluster.health(3).state, cluster.health(3).why) == ("lost", "head pod lost")
    assert cluster.health(4).state == "draining"
    assert cluster.health(5).state == "absent"


def test_a_new_generation_is_past_every_generation_any_pod_service_or_slot_used() -> None:
    cluster, _ = clusters([pod("demo-g2-w0", 2, deleting=True)], [ServiceView("demo-g5-head", 5)])
    assert cluster.next_generation(3) == 6
    assert cluster.next_generation(7, None) == 8
    assert clusters([])[0].next_generation() == 1


def test_keep_only_removes_every_other_generation_once() -> None:
    pods = [pod("demo-g1-head", 1, "head"), pod("demo-g1-w0", 1, deleting=True), pod("demo-g2-head", 2, "head")]
    cluster, plan = clusters(pods, [ServiceView("demo-g1-head", 1), ServiceView("demo-g2-head", 2)])
    plan.timers.update({"demo-g1-w0": NOW, "demo-g2-head": NOW})
    cluster.keep_only(2, None)
    assert plan.delete_pods == ["demo-g1-head"], "a pod already being deleted is not deleted again"
    assert plan.delete_services == ["demo-g1-head"]
    assert plan.timers == {"demo-g2-head": NOW}, "the removed generation's timers are forgotten"


def test_failed_workers_are_deleted_said_and_counted_and_nothing_else() -> None:
    failed = pod("demo-g1-w1", 1, index=1, phase="Failed", failure="Error (exit code 1)")
    cluster, plan = clusters([])
    assert cluster.replace_failed_workers([pod("demo-g1-w0", 1), failed]) == [failed]
    assert plan.delete_pods == ["demo-g1-w1"] and plan.create == []
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "WorkerReplaced")]
    assert "Error (exit code 1)" in plan.events[0].message
    assert plan.outcomes == {Outcome.WORKER_REPLACED: 1}


def test_new_workers_never_take_the_name_of_a_pod_still_draining() -> None:
    cluster, _ = clusters([pod("demo-g1-w0", 1, index=0), pod("demo-g1-w1", 1, index=1, deleting=True)])
    assert cluster.free_worker_indexes(1, 2) == [2, 3]
