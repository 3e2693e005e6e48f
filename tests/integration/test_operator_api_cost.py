"""What the operator asks of the Kubernetes API once a job runs: nothing, however often it looks at the job.

A running job is passed every `poll_running_s` to poll Ray; every pass reads its owner, pods and Services from the
operator's caches and writes its status only when something in it changed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from bigmodel.api.training_report import TrainingReport
from bigmodel.builders.naming import submission_id
from bigmodel.reconcile.job_observed import RayJobView
from bigmodel.reconcile.observed import RayHead
from tests.integration.test_job_operator import JOBS, WAIT_S, job_manifest, start_running, wait_status
from tests.support.emulator import Emulator, KubeClient, wait_for
from tests.support.fake_ray import FakeRay
from tests.support.operator import running_operator
from tests.support.status import wait_events_of

POLL_S = 0.1
STEADY_S = 3.0
MIN_PASSES = 10


@dataclass
class CountingRay(FakeRay):
    """Ray as FakeRay plays it, counting the job polls: one per pass of a running job."""

    polls: int = 0

    async def job(self, head: RayHead, submission_id: str) -> RayJobView | None:
        self.polls += 1
        return await super().job(head, submission_id)


@asynccontextmanager
async def running_job(emulator: Emulator, kube: KubeClient) -> AsyncIterator[tuple[CountingRay, str]]:
    """The operator, polling often, with a job Running: Ray as the operator sees it, and the job's uid."""
    ray = CountingRay()
    with running_operator(emulator, ray, poll_running_s=POLL_S):
        created = await kube.create(*JOBS, job_manifest())
        uid = created["metadata"]["uid"]
        await start_running(kube, ray, uid)
        # Running is written once the head is ready; a worker's readiness may reach the status a pass later.
        await wait_status(kube, lambda s: s.get("workersReady") == "2/2", "the workers were never counted ready")
        yield ray, uid


async def test_a_steady_job_makes_no_kubernetes_requests(emulator: Emulator, kube: KubeClient) -> None:
    async with running_job(emulator, kube) as (ray, uid):
        ray.reports[submission_id(uid, 1)] = TrainingReport(
            step=25, total_steps=100, epoch=0, epochs=2, metrics={"loss": 0.7}
        )
        await wait_status(kube, lambda s: s.get("progress", {}).get("step") == 25, "the progress was not reported")
        await wait_events_of(kube, "demo", ("Running",), WAIT_S)  # Kopf posts Events from a queue of its own
        calls, polls = len(emulator.operator_calls()), ray.polls
        await asyncio.sleep(STEADY_S)
        steady = emulator.operator_calls()[calls:]
        passes = ray.polls - polls
    assert passes >= MIN_PASSES, f"only {passes} passes in {STEADY_S} s: the job was not polled"
    assert not steady, f"{passes} passes of a steady job made Kubernetes requests: {steady}"


async def test_a_status_change_is_one_patch_of_what_changed(emulator: Emulator, kube: KubeClient) -> None:
    async with running_job(emulator, kube) as (ray, uid):
        calls = len(emulator.operator_calls())
        ray.reports[submission_id(uid, 1)] = TrainingReport(step=5, total_steps=100, epoch=0, epochs=2)
        await wait_status(kube, lambda s: s.get("progress", {}).get("step") == 5, "the progress was not reported")
        polls = ray.polls
        await wait_for(lambda: ray.polls >= polls + MIN_PASSES, WAIT_S, "the job was not polled")
        writes = [call for call in emulator.operator_calls()[calls:] if call.verb != "watch"]
    assert [(call.verb, call.resource, call.subresource) for call in writes] == [("patch", "bigmodeljobs", "status")], (
        writes
    )
