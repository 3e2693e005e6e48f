"""Runs that survive the cluster, on the whole product: the operator, the API emulator, the local kubelet, real Ray.

A pod deleted with its grace period gets SIGTERM on its main process (`ray start`), as a node drain, a spot reclaim,
a suspend or a rebuild gives it: Ray marks the node draining, the run checkpoints at its next step and trains no
further, and the run that follows resumes from exactly that step. An elastic job (minReplicas) that loses a worker
for good goes on with the one it has, and grows back when the node takes pods again. A run whose step stops moving is
restarted by the operator's watchdog as Stalled.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bigmodel.api.training_report import TrainingReport
from bigmodel.runtime.checkpoints import CheckpointStore
from tests.support.emulator import KubeClient, wait_for
from tests.support.local_cluster import (
    DriverProgress,
    LocalCluster,
    cluster_token,
    local_cluster,
    two_worker_gpt_job,
)

pytestmark = pytest.mark.e2e

JOBS = ("bigmodel.dev/v1alpha1", "bigmodeljobs")
# No checkpoint falls due by the cadence while the test interrupts the run: each one it finds is one a SIGTERM made.
EVERY_STEPS = 5000
EVERY_STEP = [{"name": "BIGMODEL_PROGRESS_INTERVAL_S", "value": "0"}]


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path) as running:
        yield running


async def _status(kube: KubeClient, name: str) -> dict[str, Any]:
    return ((await kube.get(*JOBS, name)) or {}).get("status") or {}


async def _events(kube: KubeClient, name: str) -> list[tuple[str, str]]:
    return [(e["reason"], e.get("message", "")) for e in await kube.events(involved_name=name)]


async def _progress(cluster: LocalCluster, kube: KubeClient, job: str, generation: int) -> DriverProgress:
    head = f"{job}-g{generation}-head"
    return DriverProgress(cluster.kubelet, head, await cluster_token(kube, job, generation))


async def _training_past(progress: DriverProgress, step: int, what: str, timeout_s: float = 240) -> TrainingReport:
    async def past() -> TrainingReport | None:
        report = progress.read()
        return report if report is not None and report.step >= step else None

    return await wait_for(past, timeout_s, f"{what}: training did not reach step {step} within {timeout_s} s", 0.1)


async def test_sigterm_to_a_worker_pod_and_a_suspend_cost_no_step(cluster: LocalCluster, tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    store = CheckpointStore(str(storage))
    async with KubeClient(cluster.emulator.url) as kube:
        job = two_worker_gpt_job("pre", storage, max_steps=900, every_steps=EVERY_STEPS, max_restarts=0, env=EVERY_STEP)
        await kube.create(*JOBS, job)
        await wait_for(lambda: cluster.kubelet.pid_of("pre-g1-head"), 60, "the head pod did not start", 0.2)
        progress = await _progress(cluster, kube, "pre", 1)
        await _training_past(progress, 40, "before the first SIGTERM")

        # A worker pod deleted as a node drain deletes it: SIGTERM, then SIGKILL once its grace period is over.
        await kube.delete("v1", "pods", "pre-g1-w1")

        async def resumed() -> TrainingReport | None:
            report = progress.read()
            return report if report is not None and report.worker_restarts >= 1 and report.step > 0 else None

        report = await wait_for(resumed, 120, "the run did not resume within 120 s of the worker's SIGTERM", 0.2)
        saved = store.latest()
        assert saved is not None, "the SIGTERM left no checkpoint"
        assert report.resumed_from_step == saved.step, f"resumed from {report.resumed_from_step}, saved {saved.step}"
        assert report.steps_redone == 0, f"{report.steps_redone} steps were trained twice after a graceful SIGTERM"

        # A suspend in the middle of an interval: every pod gets SIGTERM at once, the head's too.
        before = await _training_past(progress, saved.step + 40, "before the suspend")
        await kube.patch(*JOBS, "pre", {"spec": {"suspend": True}})
        steps_seen = [before.step]

        def head_gone() -> bool:
            latest = progress.read()
            steps_seen.append(latest.step if latest is not None else 0)
            return cluster.kubelet.pid_of("pre-g1-head") is None

        await wait_for(head_gone, 60, "the suspended job's head pod did not stop within 60 s", 0.05)
        reached = max(steps_seen)
        await wait_for(lambda: _suspended(kube), 60, "the job was not Suspended with its pods gone within 60 s", 0.5)
        suspended = store.latest()
        assert suspended is not None and suspended.step >= reached > saved.step, (
            f"the run reached step {reached}, and its last checkpoint is {suspended}: a suspend lost steps"
        )

        await kube.patch(*JOBS, "pre", {"spec": {"suspend": False}})
        await wait_for(lambda: cluster.kubelet.pid_of("pre-g2-head"), 120, "the resumed job's head did not start", 0.2)
        progress = await _progress(cluster, kube, "pre", 2)
        again = await _training_past(progress, suspended.step + 1, "after the resume")
        assert again.resumed_from_step == suspended.step, f"resumed from {again.resumed_from_step}, not {suspended}"
        status = await _status(kube, "pre")
        assert status["restarts"] == 0, "neither a worker's SIGTERM nor a suspend is a failure of the job"
        reasons = [reason for reason, _ in await _events(kube, "pre")]
        assert "Suspended" in reasons and "Resumed" in reasons, reasons
        await kube.delete(*JOBS, "pre")


async def _suspended(kube: KubeClient) -> bool:
    pods = await kube.list("v1", "pods")
    return (await _status(kube, "pre")).get("phase") == "Suspended" and not pods


async def test_an_elastic_run_goes_on_without_a_lost_worker_and_grows_back(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    storage = tmp_path / "storage"
    async with KubeClient(cluster.emulator.url) as kube:
        job = two_worker_gpt_job("ela", storage, max_steps=100000, every_steps=20, max_restarts=0, env=EVERY_STEP)
        job["spec"]["workers"]["minReplicas"] = 1
        job["spec"]["workload"]["builtin"]["epochs"] = 50  # long enough to shrink and grow back before its end
        await kube.create(*JOBS, job)
        await wait_for(lambda: cluster.kubelet.pid_of("ela-g1-head"), 60, "the head pod did not start", 0.2)
        progress = await _progress(cluster, kube, "ela", 1)
        first = await _training_past(progress, 30, "before the worker was lost")
        assert first.world_size == 2, f"the run started on {first.world_size} workers, not both"

        # The worker is lost for good: no node takes its replacement.
        cluster.kubelet.cordon()
        cluster.kubelet.kill("ela-g1-w1", signal.SIGKILL)

        async def shrunk() -> TrainingReport | None:
            report = progress.read()
            return report if report is not None and report.world_size == 1 and report.step > first.step else None

        alone = await wait_for(shrunk, 90, "training did not go on with the one worker left within 90 s", 0.2)
        await _training_past(progress, alone.step + 20, "on one worker")
        status = await _status(kube, "ela")
        assert status["phase"] == "Running", f"an elastic run on its minimum is {status['phase']}: {status['message']}"

        cluster.kubelet.uncordon()

        async def grown() -> TrainingReport | None:
            report = progress.read()
            return report if report is not None and report.world_size == 2 and report.step > alone.step else None

        back = await wait_for(grown, 150, "training did not grow back to 2 workers within 150 s", 0.5)
        assert back.worker_restarts >= 2

        async def told() -> list[tuple[str, str]] | None:
            events = [(r, m) for r, m in await _events(kube, "ela") if r == "WorkersResized"]
            return events if len(events) >= 2 else None

        resized = await wait_for(told, 30, "the operator did not say twice why the run changed size", 1.0)
        messages = " | ".join(message for _, message in resized)
        assert "goes on with 1 of 2 workers" in messages and "grew to 2 of 2 workers" in messages, messages
        await kube.delete(*JOBS, "ela")


async def test_a_run_that_stops_making_progress_is_restarted_as_stalled(cluster: LocalCluster, tmp_path: Path) -> None:
    stall_s = 10
    async with KubeClient(cluster.emulator.url) as kube:
        job = two_worker_gpt_job("stl", tmp_path / "storage", max_steps=10, every_steps=5, max_restarts=1)
        job["spec"]["workload"] = {"entrypoint": {"function": "user_loop:stalls", "config": {"sleepSeconds": 600}}}
        job["spec"]["workers"]["replicas"] = 1
        job["spec"]["failurePolicy"]["stallTimeoutSeconds"] = stall_s
        # The pods' processes (the driver imports the loop, the workers run it) find it beside this file.
        here = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
        job["spec"]["env"] = [{"name": "PYTHONPATH", "value": here}]
        await kube.create(*JOBS, job)

        async def stalled() -> list[str] | None:
            events = [message for reason, message in await _events(kube, "stl") if reason == "Stalled"]
            return events or None

        try:
            (message,) = await wait_for(stalled, 180, "the stalled run was not restarted as Stalled within 180 s", 1.0)
        except AssertionError as missed:
            raise AssertionError(f"{missed}; status {await _status(kube, 'stl')}") from None
        assert "no progress for" in message and f"stallTimeoutSeconds: {stall_s}" in message, message
        status = await _status(kube, "stl")
        restarting = [c for c in status["conditions"] if c["type"] == "Restarting"]
        assert status["restarts"] == 1 and restarting and restarting[0]["reason"] == "Stalled", status
        await kube.delete(*JOBS, "stl")
