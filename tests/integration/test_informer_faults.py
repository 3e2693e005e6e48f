"""The operator's informers on a bad day: their watches cut, refused or expired, and the jobs go on all the same."""

from __future__ import annotations

from tests.integration.test_job_operator import JOBS, WAIT_S, job_manifest, start_running
from tests.support.emulator import Emulator, KubeClient, wait_for
from tests.support.fake_ray import FakeRay
from tests.support.faults import Fault
from tests.support.operator import running_operator


def pod_lists(emulator: Emulator) -> int:
    return sum(1 for call in emulator.operator_calls() if call.verb == "list" and call.resource == "pods")


async def test_cut_refused_and_expired_watches_are_resumed_and_the_job_goes_on(
    emulator: Emulator, kube: KubeClient
) -> None:
    ray = FakeRay()
    with running_operator(emulator, ray):
        await wait_for(lambda: pod_lists(emulator), WAIT_S, "the pods informer never listed the pods")
        lists = pod_lists(emulator)
        # Each fault meets the pods informer's watch in turn while the job comes up: cut after one event (it
        # watches again from there), refused (it backs off and watches again), expired (it lists again), cut again.
        cut = emulator.faults.add(Fault(verb="watch", plural="pods", drop_watch=1, times=2))
        refused = emulator.faults.add(Fault(verb="watch", plural="pods", code=500, times=1))
        expired = emulator.faults.add(Fault(verb="watch", plural="pods", code=410, times=1))
        created = await kube.create(*JOBS, job_manifest())
        await start_running(kube, ray, created["metadata"]["uid"])
        assert (cut.hits, refused.hits, expired.hits) == (2, 1, 1)
        assert pod_lists(emulator) == lists + 1, "an expired watch is followed by one listing, and only that one"
