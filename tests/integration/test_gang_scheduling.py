"""Gang scheduling by the running operator: a Volcano job's PodGroup (served with Volcano's own CRD, which the emulator
checks it against) exists before any pod of its cluster, every time a cluster is built, and goes with it; a Kueue
job's pods, replacements included, form one pod group of the cluster's size, and need nothing else."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bigmodel.builders.naming import submission_id
from tests.integration.test_job_operator import (
    GENERATION_1,
    GENERATION_2,
    JOBS,
    WAIT_S,
    all_pods,
    job_manifest,
    mark,
    mark_all_ready,
    pods,
    start_running,
    wait_status,
)
from tests.support.emulator import PROJECT_CRDS, Emulator, KubeClient, running_emulator, wait_for
from tests.support.fake_ray import FakeRay
from tests.support.operator import running_operator

VOLCANO_CRD = Path(__file__).resolve().parents[1] / "fixtures" / "volcano" / "scheduling.volcano.sh_podgroups.yaml"
PODGROUPS = ("scheduling.volcano.sh/v1beta1", "podgroups")


@pytest.fixture()
def emulator() -> Iterator[Emulator]:
    """An API server that serves Volcano's PodGroups as a cluster with Volcano installed does."""
    with running_emulator([*PROJECT_CRDS, VOLCANO_CRD]) as running:
        yield running


def creations(emulator: Emulator, resources: tuple[str, ...]) -> list[str]:
    """What the operator created of these resources, in order."""
    return [call.resource for call in emulator.operator_calls() if call.verb == "create" and call.resource in resources]


async def _absent(kube: KubeClient, name: str) -> bool:
    return await kube.get(*PODGROUPS, name) is None


async def test_volcano_podgroup_exists_before_every_cluster_and_goes_with_it(
    emulator: Emulator, kube: KubeClient
) -> None:
    ray = FakeRay()
    with running_operator(emulator, ray, volcano=True):
        created = await kube.create(*JOBS, job_manifest(schedulerName="volcano", queueName="research"))
        uid = created["metadata"]["uid"]
        await start_running(kube, ray, uid)
        group = await kube.get(*PODGROUPS, "demo-g1")
        assert group is not None, "no PodGroup for the cluster"
        assert group["spec"]["minMember"] == 3 and group["spec"]["queue"] == "research"
        assert group["spec"]["minResources"] == {"cpu": "5", "memory": str(12 * 2**30), "nvidia.com/gpu": "2"}
        assert group["metadata"]["ownerReferences"][0]["uid"] == uid
        for pod in (await pods(kube)).values():
            assert pod["spec"]["schedulerName"] == "volcano"
            assert pod["metadata"]["annotations"]["scheduling.k8s.io/group-name"] == "demo-g1"

        ray.fail(submission_id(uid, 1), "lost")
        await all_pods(kube, GENERATION_2)
        await wait_for(lambda: _absent(kube, "demo-g1"), WAIT_S, "the old cluster's PodGroup was not deleted")
        rebuilt = await kube.get(*PODGROUPS, "demo-g2")
        assert rebuilt is not None and rebuilt["spec"]["minMember"] == 3
        # Volcano does not schedule a pod whose PodGroup is missing: each cluster's group came before its pods.
        assert creations(emulator, ("podgroups", "pods")) == ["podgroups", "pods", "pods", "pods"] * 2


async def test_volcano_job_is_refused_unless_the_operator_may_use_it(emulator: Emulator, kube: KubeClient) -> None:
    ray = FakeRay()
    with running_operator(emulator, ray):
        await kube.create(*JOBS, job_manifest(schedulerName="volcano"))
        status = await wait_status(
            kube,
            lambda s: any(c["type"] == "ValidationFailed" and c["status"] == "True" for c in s.get("conditions", [])),
            "the volcano job was not refused",
        )
        assert "spec.schedulerName: volcano is not enabled in this operator" in status["message"]
        assert await pods(kube) == {} and creations(emulator, ("podgroups", "pods")) == []


def gang_of(pod: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    meta = pod["metadata"]
    return (
        meta["labels"].get("kueue.x-k8s.io/queue-name"),
        meta["labels"].get("kueue.x-k8s.io/pod-group-name"),
        meta["annotations"].get("kueue.x-k8s.io/pod-group-total-count"),
    )


async def test_kueue_pods_form_one_group_and_wait_for_admission(emulator: Emulator, kube: KubeClient) -> None:
    ray = FakeRay()
    with running_operator(emulator, ray):
        created = await kube.create(*JOBS, job_manifest(queueName="team-a"))
        uid = created["metadata"]["uid"]
        found = await all_pods(kube, GENERATION_1)
        assert {name: gang_of(pod) for name, pod in found.items()} == {
            name: ("team-a", "demo-g1", "3") for name in GENERATION_1
        }
        assert not creations(emulator, ("podgroups",)), "Kueue needs no object besides the pods"
        # Kueue's webhook gates the pods and Kueue lifts the gates at admission; the emulator has no admission
        # webhooks (nor lets a pod's spec gain a gate afterwards), so the wait in the queue is proven on the decision
        # (tests/unit/test_gang.py). Here the pods run as admitted ones do.
        await mark_all_ready(kube)
        await wait_for(lambda: submission_id(uid, 1) in ray.submitted_ids(), WAIT_S, "the run was not submitted")
        await wait_status(kube, lambda s: s.get("phase") == "Running", "the job never ran")

        # Kueue does not replace a group's failed pods; the operator does, into the same group.
        await mark(kube, "demo-g1-w1", phase="Failed", exit_code=137)
        replacement = await wait_for(lambda: _pod(kube, "demo-g1-w2"), WAIT_S, "the failed worker was not replaced")
        assert gang_of(replacement) == ("team-a", "demo-g1", "3")


async def _pod(kube: KubeClient, name: str) -> dict[str, Any] | None:
    return (await pods(kube)).get(name)
