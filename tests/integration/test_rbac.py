"""Least privilege, proven: the chart grants exactly the API calls the operator makes, no more, no fewer.

Every request the operator sends to the API emulator is recorded (method -> RBAC verb, group, resource,
subresource, namespace and name) while it takes jobs and services through their whole life; the Roles the Helm
chart renders must allow each of them (a Role only in its namespace, a rule with resourceNames only to those names)
and must not grant anything that no call used. Secrets in particular: the operator creates and deletes its
clusters' token Secrets but reads only its own key's, by name, in its own namespace. With several replicas (Kopf peering), the
emulator also serves the chart's peering CRD and holds the chart's peering object, as a cluster would
after `helm install`. With gangScheduling.volcano, Volcano jobs' PodGroups (Volcano's CRD served by the emulator) are
exactly what the chart adds, and Kueue jobs need nothing more.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from bigmodel.api.training_report import TrainingReport
from bigmodel.builders.naming import submission_id
from tests.chart.rendering import FULLNAME, RELEASE, RELEASE_NAMESPACE, Grant, of_kind, render, rendered_grants
from tests.integration.test_gang_scheduling import PODGROUPS, VOLCANO_CRD
from tests.integration.test_job_operator import (
    GENERATION_1,
    GENERATION_2,
    JOBS,
    WAIT_S,
    _gone,
    all_pods,
    job_manifest,
    mark,
    mark_all_ready,
    squat,
    start_running,
    wait_conflict,
    wait_status,
)
from tests.integration.test_service_operator import SERVICES, service_manifest, service_pods, start_cluster
from tests.integration.test_service_operator import wait_status as wait_service_status
from tests.support.emulator import PROJECT_CRDS, Emulator, KubeClient, running_emulator, wait_for
from tests.support.fake_ray import FakeRay
from tests.support.operator import running_operator

Call = tuple[str | None, str, str, str, str | None]
"""(namespace, group, resource[/subresource], verb, name) of one request."""


def used_permissions(emulator: Emulator) -> set[Call]:
    return {
        (
            call.namespace,
            call.group,
            f"{call.resource}/{call.subresource}" if call.subresource else call.resource,
            call.verb,
            call.name if call.verb not in ("list", "watch", "create") else None,
        )
        for call in emulator.operator_calls()
    }


async def whole_life_of_jobs(kube: KubeClient, ray: FakeRay) -> None:
    """A job that loses a worker, fails once, succeeds and expires; an invalid one; one deleted mid-run; two whose
    head Service or pod name is taken by someone else's (the operator reads who holds it)."""
    await squat(kube, "services", "squat-svc-g1-head")
    await squat(kube, "pods", "squat-pod-g1-head")
    await kube.create(*JOBS, job_manifest("squat-svc"))
    await kube.create(*JOBS, job_manifest("squat-pod"))
    created = await kube.create(*JOBS, job_manifest(ttlSecondsAfterFinished=1))
    uid = created["metadata"]["uid"]
    await start_running(kube, ray, uid)
    await mark(kube, "demo-g1-w0", phase="Failed", exit_code=1)
    await wait_status(kube, lambda s: s["workers"]["replaced"] == 1, "the worker was not replaced")
    ray.fail(submission_id(uid, 1), "lost")
    await all_pods(kube, GENERATION_2)
    await mark_all_ready(kube)
    await wait_for(lambda: submission_id(uid, 2) in ray.submitted_ids(), WAIT_S, "no second run")
    ray.succeed(submission_id(uid, 2), TrainingReport(step=10, total_steps=10, done=True))
    await wait_for(lambda: _gone(kube), WAIT_S, "ttlSecondsAfterFinished did not delete the job")

    invalid = job_manifest(checkpoint={})  # valid by the schema, invalid to the operator: no storage
    invalid["metadata"]["name"] = "broken"
    await kube.create(*JOBS, invalid)
    await wait_status(kube, lambda s: bool(s.get("conditions")), "the invalid job got no status", name="broken")

    await kube.create(*JOBS, job_manifest())
    await all_pods(kube, GENERATION_1)
    await kube.delete(*JOBS, "demo")
    await wait_for(lambda: _gone(kube), WAIT_S, "the deleted job was not released")

    await wait_conflict(kube, "squat-svc", "creating Service squat-svc-g1-head")
    await wait_conflict(kube, "squat-pod", "creating Pod squat-pod-g1-head")


async def whole_life_of_gang_jobs(kube: KubeClient, ray: FakeRay) -> None:
    """A Volcano job whose run fails once (its rebuilt cluster gets a new PodGroup, the old one is deleted) and which
    is deleted; a Kueue job, created and deleted; a Volcano job whose PodGroup name is taken (the operator reads
    who holds it)."""
    await kube.create(*PODGROUPS, {"metadata": {"name": "squat-pg-g1"}, "spec": {"minMember": 1}})
    await kube.create(*JOBS, job_manifest("squat-pg", schedulerName="volcano"))
    created = await kube.create(*JOBS, job_manifest(schedulerName="volcano", queueName="research"))
    uid = created["metadata"]["uid"]
    await start_running(kube, ray, uid)
    ray.fail(submission_id(uid, 1), "lost")
    await all_pods(kube, GENERATION_2)
    await wait_for(lambda: _absent(kube, "demo-g1"), WAIT_S, "the old cluster's PodGroup was not deleted")
    await kube.delete(*JOBS, "demo")
    await wait_for(lambda: _gone(kube), WAIT_S, "the deleted volcano job was not released")

    await kube.create(*JOBS, job_manifest(queueName="team-a"))
    await all_pods(kube, GENERATION_1)
    await kube.delete(*JOBS, "demo")
    await wait_for(lambda: _gone(kube), WAIT_S, "the deleted kueue job was not released")

    await wait_conflict(kube, "squat-pg", "creating PodGroup squat-pg-g1")


async def whole_life_of_services(kube: KubeClient, ray: FakeRay) -> None:
    """A service that serves, is upgraded to a new cluster and is deleted; an invalid one."""
    await kube.create(*SERVICES, service_manifest())
    await start_cluster(kube, ray, 0)
    await wait_service_status(kube, lambda s: s.get("phase") == "Ready", "the service never became Ready")
    await kube.patch(*SERVICES, "demo", {"spec": {"image": "registry.example/bigmodel-runtime:2"}})
    await start_cluster(kube, ray, 1)
    await wait_service_status(
        kube, lambda s: (s.get("serving") or {}).get("generation") == 1, "the upgrade never switched"
    )
    await kube.delete(*SERVICES, "demo")
    await wait_for(lambda: _no_pods(service_pods(kube)), WAIT_S, "the deleted service's pods were not removed")

    invalid = service_manifest("broken", replicaResources={"cpu": 8})
    await kube.create(*SERVICES, invalid)
    await wait_service_status(kube, lambda s: bool(s.get("conditions")), "the invalid service got no status", "broken")


async def _no_pods(found: Any) -> bool:
    return not await found


async def whole_life(kube: KubeClient, ray: FakeRay) -> None:
    await whole_life_of_jobs(kube, ray)
    await whole_life_of_services(kube, ray)


def _compare(used: set[Call], granted: set[Grant]) -> None:
    missing = [call for call in used if not any(grant.allows(*call) for grant in granted)]
    unused = [grant for grant in granted if not any(grant.allows(*call) for call in used)]
    assert not missing, f"the operator made calls the chart does not allow: {sorted(missing, key=str)}"
    assert not unused, f"the chart grants permissions the operator never used: {sorted(unused, key=str)}"


# What the chart's Deployment tells the operator about where it runs.
AS_INSTALLED = {"namespace": RELEASE_NAMESPACE, "token_key_secret": f"{FULLNAME}-token-key"}


async def test_cluster_wide_rbac_is_exactly_what_the_operator_uses(emulator: Emulator, kube: KubeClient) -> None:
    ray = FakeRay()
    with running_operator(emulator, ray, **AS_INSTALLED):
        await whole_life(kube, ray)
    _compare(used_permissions(emulator), rendered_grants({}))


async def test_namespaced_rbac_is_exactly_what_the_operator_uses(emulator: Emulator, kube: KubeClient) -> None:
    ray = FakeRay()
    with running_operator(emulator, ray, namespaces=["default"], **AS_INSTALLED):
        await whole_life(kube, ray)
    _compare(used_permissions(emulator), rendered_grants({"watchNamespaces": ["default"]}))


@pytest.mark.parametrize("mode", [{}, {"watchNamespaces": ["default"]}], ids=["cluster-wide", "namespaced"])
async def test_gang_scheduling_rbac_is_exactly_what_the_operator_uses(mode: dict[str, Any]) -> None:
    """With gangScheduling.volcano, the chart grants exactly the PodGroup calls Volcano jobs make; Kueue jobs, whose
    pods join their group by labels, make no call that the chart's rules without it do not already allow."""
    ray = FakeRay()
    with running_emulator([*PROJECT_CRDS, VOLCANO_CRD]) as emulator:
        async with KubeClient(emulator.url) as kube:
            with running_operator(emulator, ray, volcano=True, namespaces=mode.get("watchNamespaces", []),
                                  **AS_INSTALLED):  # fmt: skip
                await whole_life(kube, ray)
                await whole_life_of_gang_jobs(kube, ray)
        used = used_permissions(emulator)
    _compare(used, rendered_grants({**mode, "gangScheduling": {"volcano": True}}))


async def _absent(kube: KubeClient, name: str) -> bool:
    return await kube.get(*PODGROUPS, name) is None


# Kopf names a replica by $POD_ID in the peering object, which the chart sets to the pod's name.
POD_ID = "bigmodel-operator-7d9f-x2v4q"


@pytest.mark.parametrize(
    "values",
    [{"replicas": 2}, {"replicas": 2, "watchNamespaces": ["default"]}],
    ids=["cluster-wide", "namespaced"],
)
async def test_peering_rbac_is_exactly_what_the_operator_uses(
    values: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = render(values)
    (crd,) = of_kind(objects, "CustomResourceDefinition")
    (peering,) = [obj for obj in objects if obj["apiVersion"] == "kopf.dev/v1"]
    crd_file = tmp_path / "kopf-peering-crd.yaml"
    crd_file.write_text(yaml.safe_dump(crd))
    plural = crd["spec"]["names"]["plural"]
    namespace = peering["metadata"].get("namespace")
    monkeypatch.setenv("POD_ID", POD_ID)
    ray = FakeRay()
    with running_emulator([*PROJECT_CRDS, crd_file]) as emulator:
        async with KubeClient(emulator.url) as kube:
            await kube.create("kopf.dev/v1", plural, peering, namespace=namespace)
            watched = values.get("watchNamespaces", [])
            with running_operator(emulator, ray, peering=RELEASE, namespaces=watched, **AS_INSTALLED):
                # Told a peering name, Kopf stays paused until it has read the peering object: a job life that
                # completes proves the operator found it and, alone there, went on.
                await whole_life(kube, ray)
                live = await kube.get("kopf.dev/v1", plural, RELEASE, namespace=namespace)
                assert live is not None and list(live.get("status", {})) == [POD_ID], live
        used = used_permissions(emulator)
    _compare(used, rendered_grants(values))
