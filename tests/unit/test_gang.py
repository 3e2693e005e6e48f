"""Gang scheduling, checked against the schedulers' own contracts: a job's pods as one Kueue pod group (the labels
and annotations of Kueue's "Run a plain Pod group"), or as one Volcano PodGroup (validated with Volcano's CRD, in
tests/fixtures/volcano), made before any pod; and a cluster that waits in a queue is not counted as starting."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from crd_schema import strict_validator
from kubernetes.utils import parse_quantity

from bigmodel.api.job import BigModelJob, BigModelJobStatus
from bigmodel.api.service import BigModelService
from bigmodel.api.wire import REPLACES_ANNOTATION
from bigmodel.builders.gang import min_resources, pod_group
from bigmodel.builders.network_policy import OperatorPeer
from bigmodel.builders.ray_cluster import head_pod, worker_pod
from bigmodel.reconcile.cluster import Clusters
from bigmodel.reconcile.job import decide_job, spec_digests
from bigmodel.reconcile.job_observed import JobObservation
from bigmodel.reconcile.observed import ClusterObservation, PodView
from bigmodel.reconcile.plans import Plan
from tests.support.schema import StructuralSchema

ROOT = Path(__file__).resolve().parents[2]
VOLCANO_CRD = yaml.safe_load((ROOT / "tests/fixtures/volcano/scheduling.volcano.sh_podgroups.yaml").read_text())
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
UID = "6f1c2d3e-4a5b-4c6d-8e9f-0a1b2c3d4e5f"
KUBERNETES_VERSION = "1.37"

# Kueue's contract for a plain pod group (kueue.sigs.k8s.io/docs/tasks/run/plain_pods, and the constants of its pod
# integration: pkg/controller/jobs/pod/constants): written out here, not imported, so that a change of ours that
# drifts from Kueue's names fails.
KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
KUEUE_GROUP = "kueue.x-k8s.io/pod-group-name"
KUEUE_TOTAL = "kueue.x-k8s.io/pod-group-total-count"
KUEUE_RETRIABLE = "kueue.x-k8s.io/retriable-in-group"
KUEUE_GATE = "kueue.x-k8s.io/admission"
# Volcano's: the annotation of pkg/apis/scheduling/v1beta1/labels.go (KubeGroupNameAnnotationKey).
VOLCANO_GROUP = "scheduling.k8s.io/group-name"
# Kueue names the group's Workload after it, so the name must be a valid object name (a DNS subdomain), and it is a
# label value (63 characters at most).
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def make_job(name: str = "demo", **spec: Any) -> BigModelJob:
    return BigModelJob.model_validate(
        {
            "apiVersion": "bigmodel.dev/v1alpha1",
            "kind": "BigModelJob",
            "metadata": {"name": name, "namespace": "research", "uid": UID, "generation": 2},
            "spec": {
                "workload": {"builtin": {"task": "digits"}},
                "head": {"resources": {"cpu": "500m", "memory": "2Gi"}},
                "workers": {"replicas": 3, "resources": {"cpu": "1500m", "memory": "8Gi", "gpu": 2}},
                "checkpoint": {"storage": "s3://bucket/demo"},
                **spec,
            },
        },
        by_alias=True,
    )


def kueue_job(**spec: Any) -> BigModelJob:
    return make_job(queueName="team-a", **spec)


def volcano_job(**spec: Any) -> BigModelJob:
    return make_job(schedulerName="volcano", **spec)


def build(job: BigModelJob | BigModelService, generation: int = 1, seen: ClusterObservation | None = None) -> Plan[Any]:
    plan: Plan[Any] = Plan(status=BigModelJobStatus())
    observed = seen or ClusterObservation(now=NOW)
    clusters = Clusters(job, observed, plan, claim=None, stamp={}, operator=OperatorPeer())
    clusters.build(generation, job.spec.workers.replicas if isinstance(job, BigModelJob) else 1)
    return plan


def pods_of(plan: Plan[Any]) -> list[dict[str, Any]]:
    return [obj for obj in plan.create if obj["kind"] == "Pod"]


def labels(pod: dict[str, Any]) -> dict[str, str]:
    return dict(pod["metadata"].get("labels") or {})


def annotations(pod: dict[str, Any]) -> dict[str, str]:
    return dict(pod["metadata"].get("annotations") or {})


# Kueue


def test_every_pod_of_a_cluster_joins_one_kueue_pod_group_of_its_size() -> None:
    pods = pods_of(build(kueue_job(), generation=4))
    assert len(pods) == 4
    for pod in pods:
        assert labels(pod)[KUEUE_QUEUE] == "team-a"
        assert labels(pod)[KUEUE_GROUP] == "demo-g4"
        # The total count is every pod of the group, the head included: Kueue makes the Workload only once that many
        # pods exist, and admits them together.
        assert annotations(pod)[KUEUE_TOTAL] == "4"
        assert annotations(pod)[KUEUE_RETRIABLE] == "false"
        # Kueue's webhook adds its gate; a pod created with one would never be ungated by anyone else.
        assert "schedulingGates" not in pod["spec"] and "schedulerName" not in pod["spec"]
        assert VOLCANO_GROUP not in annotations(pod)


def test_kueue_group_names_are_label_values_and_object_names() -> None:
    longest = "j" * 48
    for generation in (1, 99999):
        (pod, *_) = pods_of(build(make_job(longest, queueName="q"), generation))
        group = labels(pod)[KUEUE_GROUP]
        assert len(group) <= 63 and LABEL_VALUE.match(group) and DNS_SUBDOMAIN.match(group)
    queue = "a" * 63
    job = make_job(queueName=queue)
    assert labels(head_pod(job, 1, None))[KUEUE_QUEUE] == queue


def test_a_replacement_worker_joins_its_generations_group() -> None:
    """Kueue does not replace failed pods of a group; the controller that made them does, with the same group."""
    job = kueue_job()
    replacement = worker_pod(job, 2, 7, None)
    replacement["metadata"]["annotations"][REPLACES_ANNOTATION] = "demo-g2-w1"
    original = worker_pod(job, 2, 1, None)
    for key in (KUEUE_QUEUE, KUEUE_GROUP):
        assert labels(replacement)[key] == labels(original)[key]
    for key in (KUEUE_TOTAL, KUEUE_RETRIABLE):
        assert annotations(replacement)[key] == annotations(original)[key]
    # Kueue sorts a group's pods into roles by their spec's shape: a replacement has its original's role.
    assert replacement["spec"] == original["spec"]


def test_a_rebuilt_cluster_is_a_new_group() -> None:
    job = kueue_job()
    assert labels(head_pod(job, 1, None))[KUEUE_GROUP] != labels(head_pod(job, 2, None))[KUEUE_GROUP]


def test_no_queue_no_gang() -> None:
    plan = build(make_job())
    for pod in pods_of(plan):
        assert not [key for key in (*labels(pod), *annotations(pod)) if "kueue" in key or "volcano" in key]
        assert "schedulerName" not in pod["spec"] and VOLCANO_GROUP not in annotations(pod)
    assert "PodGroup" not in [obj["kind"] for obj in plan.create]
    assert pod_group(make_job(), 1) is None and pod_group(kueue_job(), 1) is None


# Volcano


def test_volcano_pods_name_the_scheduler_and_the_podgroup() -> None:
    for pod in pods_of(build(volcano_job(), generation=3)):
        assert pod["spec"]["schedulerName"] == "volcano"
        assert annotations(pod)[VOLCANO_GROUP] == "demo-g3"
        assert not [key for key in labels(pod) if key.startswith("kueue.x-k8s.io/")]


def test_the_podgroup_comes_before_any_pod() -> None:
    kinds = [obj["kind"] for obj in build(volcano_job()).create]
    assert kinds.count("PodGroup") == 1
    assert kinds.index("PodGroup") < kinds.index("Pod")


def admitted(group: dict[str, Any]) -> dict[str, Any]:
    """The PodGroup as an API server with Volcano's CRD would store it; fails on anything the schema refuses or
    does not know."""
    (version,) = VOLCANO_CRD["spec"]["versions"]
    schema = dict(version["schema"]["openAPIV3Schema"])
    strict = strict_validator({**schema, "properties": {**schema["properties"], "metadata": {"type": "object"}}})
    assert [error.message for error in strict.iter_errors(group)] == []
    stored, errors = StructuralSchema(schema).admit(group)
    assert errors == []
    return stored


def test_the_podgroup_follows_volcanos_crd() -> None:
    job = volcano_job(queueName="gpu-batch")
    group = pod_group(job, 3)
    assert group is not None
    assert (group["apiVersion"], group["kind"]) == (
        f"{VOLCANO_CRD['spec']['group']}/{VOLCANO_CRD['spec']['versions'][0]['name']}",
        VOLCANO_CRD["spec"]["names"]["kind"],
    )
    stored = admitted(group)
    assert stored["spec"]["queue"] == "gpu-batch"
    meta = group["metadata"]
    assert meta["name"] == "demo-g3" and meta["namespace"] == "research"
    (owner,) = meta["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == ("BigModelJob", "demo", UID, True)


def test_without_a_queue_volcano_uses_its_default_queue() -> None:
    group = pod_group(volcano_job(), 1)
    assert group is not None and "queue" not in group["spec"]
    assert admitted(group)["spec"]["queue"] == "default"


def test_min_member_and_min_resources_are_the_whole_cluster() -> None:
    """minMember is every pod the operator makes; minResources what they request, summed from the pods themselves."""
    job = volcano_job()
    plan = build(job)
    (group,) = [obj for obj in plan.create if obj["kind"] == "PodGroup"]
    pods = pods_of(plan)
    assert group["spec"]["minMember"] == len(pods) == 4
    total: dict[str, Decimal] = {}
    for pod in pods:
        for container in pod["spec"]["containers"]:
            for resource, amount in container["resources"]["requests"].items():
                total[resource] = total.get(resource, Decimal(0)) + parse_quantity(amount)
    declared = {resource: parse_quantity(amount) for resource, amount in group["spec"]["minResources"].items()}
    assert declared == total
    assert group["spec"]["minResources"] == {"cpu": "5", "memory": str(26 * 2**30), "nvidia.com/gpu": "6"}


def test_an_elastic_runs_group_starts_with_its_minimum() -> None:
    """Volcano gangs the head and minReplicas workers; the rest of the pods join as they fit."""
    job = volcano_job(workers={"replicas": 3, "minReplicas": 1, "resources": {"cpu": "2", "memory": "4Gi"}})
    group = pod_group(job, 1)
    assert group is not None and group["spec"]["minMember"] == 2
    assert parse_quantity(group["spec"]["minResources"]["cpu"]) == parse_quantity(job.spec.head.resources.cpu) + 2
    assert admitted(group)["spec"]["minMember"] == 2


def test_min_resources_keeps_fractional_cores_in_millicores() -> None:
    job = volcano_job(workers={"replicas": 2, "resources": {"cpu": "250m", "memory": "1.5Gi"}})
    assert min_resources(job) == {"cpu": "1", "memory": str(2 * 2**30 + 3 * 2**30)}
    job = volcano_job(workers={"replicas": 1, "resources": {"cpu": "0.3"}})
    assert min_resources(job)["cpu"] == "800m"


@pytest.mark.parametrize("job", [kueue_job(), volcano_job(queueName="q")], ids=["kueue", "volcano"])
def test_gang_pods_pass_the_kubernetes_schema(job: BigModelJob) -> None:
    for pod in pods_of(build(job)):
        kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)


def test_services_are_never_ganged() -> None:
    service = BigModelService.model_validate(
        {
            "apiVersion": "bigmodel.dev/v1alpha1",
            "kind": "BigModelService",
            "metadata": {"name": "demo", "namespace": "research", "uid": UID},
            "spec": {"model": {"uri": "s3://bucket/model"}},
        },
        by_alias=True,
    )
    plan = build(service)
    assert "PodGroup" not in [obj["kind"] for obj in plan.create]
    assert all("schedulerName" not in pod["spec"] for pod in pods_of(plan))


def seen_pods(job: BigModelJob, generation: int, *, gated: bool = False) -> list[PodView]:
    objects = [head_pod(job, generation, None)] + [
        worker_pod(job, generation, index, None) for index in range(job.spec.workers.replicas)
    ]
    views = []
    for obj in objects:
        obj["metadata"]["annotations"].update(spec_digests(job))
        obj["metadata"]["creationTimestamp"] = (NOW - timedelta(hours=2)).isoformat()
        if gated:
            obj["spec"]["schedulingGates"] = [{"name": KUEUE_GATE}]
            obj["status"] = {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                                                                 "reason": "SchedulingGated"}]}  # fmt: skip
        else:
            obj["status"] = {"phase": "Pending"}
        views.append(PodView.from_object(obj))
    return views


def test_removing_a_volcano_generation_deletes_its_podgroup() -> None:
    job = volcano_job()
    seen = ClusterObservation(now=NOW, pods=seen_pods(job, 1))
    plan: Plan[Any] = Plan(status=BigModelJobStatus())
    Clusters(job, seen, plan, claim=None, stamp={}, operator=OperatorPeer()).remove(1)
    assert ("PodGroup", "demo-g1") in plan.delete_access
    # Moved off Volcano by an edit (which rebuilds the cluster): the old generation's pods still name their group.
    moved = make_job()
    plan = Plan(status=BigModelJobStatus())
    Clusters(moved, seen, plan, claim=None, stamp={}, operator=OperatorPeer()).remove(1)
    assert ("PodGroup", "demo-g1") in plan.delete_access
    # Never on Volcano: nothing to delete, and no PodGroup permission needed.
    plain = make_job()
    plan = Plan(status=BigModelJobStatus())
    Clusters(plain, ClusterObservation(now=NOW, pods=seen_pods(plain, 1)), plan, claim=None, stamp={},
             operator=OperatorPeer()).remove(1)  # fmt: skip
    assert [kind for kind, _ in plan.delete_access] == ["NetworkPolicy", "Secret"]


# A cluster waiting in its queue


def starting(job: BigModelJob, **status: Any) -> BigModelJob:
    job.status = BigModelJobStatus.model_validate(
        {"phase": "Starting", "clusterGeneration": 1, "startTime": NOW - timedelta(hours=2),
         "startingSince": NOW - timedelta(hours=2), **status},
        by_alias=True,
    )  # fmt: skip
    return job


def admission(plan: Plan[BigModelJobStatus]) -> tuple[str, str] | None:
    found = next((c for c in plan.status.conditions if c.type == "Admitted"), None)
    return (found.status, found.reason) if found else None


def test_a_queued_cluster_is_pending_and_its_startup_clock_does_not_run() -> None:
    """Two hours in the queue, past the 30-minute startupDeadlineSeconds: still waiting, not Failed."""
    job = starting(kueue_job())
    plan = decide_job(job, JobObservation(now=NOW, pods=seen_pods(job, 1, gated=True)))
    assert plan.status.phase == "Pending"
    assert plan.status.message.startswith("waiting for admission in queue team-a: pod demo-g1-head is held by")
    assert admission(plan) == ("False", "Queued") and [e.reason for e in plan.events] == ["Queued"]
    assert plan.status.starting_since is None
    assert plan.create == [] and plan.delete_pods == [] and plan.ray == []
    # Nothing to poll: Kueue lifting the gates is a pod update, which wakes the loop.
    assert plan.requeue_after is None
    # The next pass in the queue says nothing new.
    job.status = plan.status
    again = decide_job(job, JobObservation(now=NOW + timedelta(minutes=1), pods=seen_pods(job, 1, gated=True)))
    assert again.events == [] and again.status.conditions == plan.status.conditions


def test_admission_starts_the_startup_clock() -> None:
    job = starting(kueue_job())
    job.status = decide_job(job, JobObservation(now=NOW, pods=seen_pods(job, 1, gated=True))).status
    later = NOW + timedelta(hours=1)
    plan = decide_job(job, JobObservation(now=later, pods=seen_pods(job, 1)))
    assert admission(plan) == ("True", "Admitted") and "Admitted" in [e.reason for e in plan.events]
    assert plan.status.starting_since == later and plan.status.phase == "Starting"
    # A job that never queued gets no Admitted condition.
    plain = starting(make_job(), startingSince=NOW - timedelta(minutes=1))
    assert admission(decide_job(plain, JobObservation(now=NOW, pods=seen_pods(plain, 1)))) is None
