"""A BigModelJob on a real cluster's bad days, against the emulator's API server: pods that stay Terminating (a
lost node), a job deleted and applied again while its pods drain, pods forged with a job's labels."""

from __future__ import annotations

from typing import Any

from bigmodel.builders.naming import submission_id
from tests.integration.test_job_operator import (
    GENERATION_1,
    JOBS,
    WAIT_S,
    all_pods,
    event_reasons,
    job_manifest,
    mark,
    mark_all_ready,
    pods,
    start_running,
    wait_status,
)
from tests.support.emulator import Emulator, KubeClient, wait_for
from tests.support.fake_ray import FakeRay
from tests.support.faults import Fault
from tests.support.operator import running_operator

LOST_NODE = "node-a"


async def running_on_node(kube: KubeClient, ray: FakeRay, node: str = LOST_NODE) -> None:
    """The demo job Running, its pods bound to `node` (so that, deleted, they stay Terminating as on a real cluster)."""
    created = await kube.create(*JOBS, job_manifest())
    await all_pods(kube, GENERATION_1)
    for name in GENERATION_1:
        await kube.bind(name, node)
    await start_running(kube, ray, created["metadata"]["uid"])


async def terminating(kube: KubeClient, job: str = "demo") -> set[str]:
    found = await kube.list("v1", "pods", label_selector=f"bigmodel.dev/job={job}")
    return {pod["metadata"]["name"] for pod in found if pod["metadata"].get("deletionTimestamp")}


async def test_a_worker_evicted_from_a_lost_node_is_replaced_under_a_fresh_name(
    emulator: Emulator, kube: KubeClient
) -> None:
    ray = FakeRay()
    with running_operator(emulator, ray):
        await running_on_node(kube, ray)
        emulator.lose_node(LOST_NODE)
        await kube.delete("v1", "pods", "demo-g1-w1")  # what the node lifecycle controller's eviction does
        assert await terminating(kube) == {"demo-g1-w1"}, "on a lost node, the pod stays Terminating"

        await wait_for(
            lambda: _contains(_names(pods(kube)), "demo-g1-w2"),
            WAIT_S,
            "no replacement under a fresh name while the evicted pod stays Terminating",
        )
        await mark(kube, "demo-g1-w2")
        current = await wait_status(
            kube, lambda s: s.get("workersReady") == "2/2", "the job did not get back to 2/2 workers"
        )
        assert current["restarts"] == 0 and current["phase"] == "Running"
        assert "demo-g1-w1" in await terminating(kube), "the lost node's pod is still there, never touched"
        assert not any(c["type"] == "ReconcileFailed" and c["status"] == "True" for c in current["conditions"])


async def test_a_job_deleted_and_applied_again_while_its_pods_drain_starts_clean(
    emulator: Emulator, kube: KubeClient
) -> None:
    ray = FakeRay()
    with running_operator(emulator, ray):
        await running_on_node(kube, ray)
        emulator.lose_node(LOST_NODE)
        await kube.delete(*JOBS, "demo")
        await wait_for(lambda: _gone(kube.get(*JOBS, "demo")), WAIT_S, "the first job was not deleted")
        assert await terminating(kube) == set(GENERATION_1), "its pods drain for ever on the lost node"

        second = await kube.create(*JOBS, job_manifest())
        fresh = ["demo-g2-head", "demo-g2-w0", "demo-g2-w1"]
        await wait_for(lambda: _has_all(_names(pods(kube)), fresh), WAIT_S, "the new job did not build generation 2")
        for name in fresh:
            await mark(kube, name)
        uid = second["metadata"]["uid"]
        await wait_for(lambda: submission_id(uid, 2) in ray.submitted_ids(), WAIT_S, "the new run was not submitted")
        running = await wait_status(kube, lambda s: s.get("phase") == "Running", "the new job never reached Running")
        assert running["restarts"] == 0 and running["clusterGeneration"] == 2, "nothing of the old job was taken"
        assert "Restarting" not in await event_reasons(kube)


async def test_a_pod_forged_with_a_jobs_labels_is_never_taken_for_its_head(
    emulator: Emulator, kube: KubeClient
) -> None:
    forged = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "demo-g1-head",
            "labels": {
                "app.kubernetes.io/managed-by": "bigmodel-operator",
                "bigmodel.dev/job": "demo",
                "bigmodel.dev/generation": "1",
                "bigmodel.dev/role": "head",
            },
        },
        "spec": {"containers": [{"name": "x", "image": "attacker"}]},
    }
    await kube.create("v1", "pods", forged)
    await mark(kube, "demo-g1-head", pod_ip="10.6.6.6")
    ray = FakeRay()
    with running_operator(emulator, ray):
        created = await kube.create(*JOBS, job_manifest())
        fresh = ["demo-g2-head", "demo-g2-w0", "demo-g2-w1"]
        await wait_for(lambda: _has_all(_names(pods(kube)), fresh), WAIT_S, "the job did not build its own cluster")
        await mark_all_ready(kube)
        uid = created["metadata"]["uid"]
        await wait_for(lambda: submission_id(uid, 2) in ray.submitted_ids(), WAIT_S, "the run was not submitted")
        assert "10.6.6.6" not in ray.called, "nothing was sent to the forged pod"
        assert (await kube.get("v1", "pods", "demo-g1-head")) is not None, "and it was left alone"


def failed_condition(status: dict[str, Any]) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions", []) if c["type"] == "ReconcileFailed"), None)


async def test_a_quota_refusing_pods_is_said_once_and_the_job_goes_on_when_it_allows(
    emulator: Emulator, kube: KubeClient
) -> None:
    quota = emulator.faults.add(Fault(method="POST", plural="pods", code=403))
    ray = FakeRay()
    with running_operator(emulator, ray):
        created = await kube.create(*JOBS, job_manifest())
        refused = await wait_status(
            kube,
            lambda s: (failed_condition(s) or {}).get("status") == "True",
            "the refused pod creation never reached the status",
        )
        condition = failed_condition(refused) or {}
        assert condition["reason"] == "Forbidden" and "exceeded quota" in condition["message"]
        assert condition["message"].startswith("creating Pod demo-g1-head: ")
        assert refused["phase"] in ("Starting", "Pending") and refused["clusterGeneration"] == 1
        await wait_for(lambda: quota.hits >= 3, WAIT_S, "the operator did not retry the refused creation")
        assert (await event_reasons(kube)).count("Forbidden") == 1, "one Warning Event per problem, not per retry"

        emulator.faults.remove(quota)
        await start_running(kube, ray, created["metadata"]["uid"])
        running = await wait_status(
            kube, lambda s: (failed_condition(s) or {}).get("status") == "False", "the condition was not cleared"
        )
        assert running["restarts"] == 0 and running["clusterGeneration"] == 1, "a refused creation is no restart"


async def test_a_restart_whose_status_write_failed_is_counted_once_and_its_cluster_kept(
    emulator: Emulator, kube: KubeClient
) -> None:
    ray = FakeRay()
    with running_operator(emulator, ray):
        created = await kube.create(*JOBS, job_manifest(failurePolicy={"maxRestarts": 3}))
        uid = created["metadata"]["uid"]
        await start_running(kube, ray, uid)
        lost_write = emulator.faults.add(
            Fault(method="PATCH", plural="bigmodeljobs", subresource="status", code=500, times=2)
        )
        ray.fail(submission_id(uid, 1), "worker OOM")
        fresh = ["demo-g2-head", "demo-g2-w0", "demo-g2-w1"]
        await wait_for(lambda: _has_all(_names(pods(kube)), fresh), WAIT_S, "the cluster was not rebuilt")
        await wait_for(lambda: lost_write.hits == 2, WAIT_S, "the status writes were not refused")
        for name in fresh:
            await mark(kube, name)
        await wait_for(lambda: submission_id(uid, 2) in ray.submitted_ids(), WAIT_S, "the new run was not submitted")
        running = await wait_status(
            kube, lambda s: s.get("phase") == "Running" and s.get("clusterGeneration") == 2, "never Running again"
        )
        assert running["restarts"] == 1, "the one failure is counted once, whatever write failed"
        assert not any(name.startswith("demo-g3") for name in await _names(pods(kube))), "no second rebuild"


async def test_a_replacement_refused_for_a_while_counts_its_failure_once(emulator: Emulator, kube: KubeClient) -> None:
    ray = FakeRay()
    with running_operator(emulator, ray):
        created = await kube.create(*JOBS, job_manifest())
        await start_running(kube, ray, created["metadata"]["uid"])
        quota = emulator.faults.add(Fault(method="POST", plural="pods", code=403, times=3))
        refused_delete = emulator.faults.add(Fault(method="DELETE", plural="pods", code=429, times=1))
        await mark(kube, "demo-g1-w1", phase="Failed", exit_code=137)
        await wait_for(lambda: quota.spent, WAIT_S, "the replacement was not refused three times")
        await wait_for(lambda: _contains(_names(pods(kube)), "demo-g1-w2"), WAIT_S, "no replacement once allowed")
        await mark(kube, "demo-g1-w2")
        await wait_for(lambda: refused_delete.spent, WAIT_S, "the failed pod's deletion was not refused once")
        await wait_for(lambda: _lacks(_names(pods(kube)), "demo-g1-w1"), WAIT_S, "the failed pod was not deleted")
        current = await wait_status(kube, lambda s: s.get("workersReady") == "2/2", "not back to 2/2 workers")
        assert current["workers"]["replaced"] == 1, "one failure, counted once, whichever steps were refused"
        assert set(await _names(pods(kube))) == {"demo-g1-head", "demo-g1-w0", "demo-g1-w2"}


async def test_an_admission_webhook_refusing_pods_is_said_in_its_words(emulator: Emulator, kube: KubeClient) -> None:
    emulator.faults.add(
        Fault(
            method="POST",
            plural="pods",
            code=422,
            message='admission webhook "policy.example.com" denied the request: priorityClassName "gpu-high" is not allowed',
        )
    )
    with running_operator(emulator, FakeRay()):
        await kube.create(*JOBS, job_manifest())
        refused = await wait_status(
            kube, lambda s: (failed_condition(s) or {}).get("status") == "True", "the refusal never reached the status"
        )
        condition = failed_condition(refused) or {}
        assert (
            condition["reason"] == "Invalid" and 'priorityClassName "gpu-high" is not allowed' in condition["message"]
        )


async def _names(awaitable: Any) -> set[str]:
    return set(await awaitable)


async def _contains(awaitable: Any, item: str) -> bool:
    return item in await awaitable


async def _lacks(awaitable: Any, item: str) -> bool:
    return item not in await awaitable


async def _has_all(awaitable: Any, items: list[str]) -> bool:
    return set(items) <= set(await awaitable)


async def _gone(awaitable: Any) -> bool:
    return await awaitable is None
