"""The whole product on one machine: the operator, the API emulator, pods run as local processes, real Ray.

The operator renders real Ray head and worker pods; the local kubelet runs their `ray start` commands;
the operator submits the training through Ray's job API on the head; a worker pod is killed mid-run,
replaced by the operator, and Ray Train resumes from the checkpoint until the job Succeeds.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bigmodel.runtime.artifacts import load_model
from bigmodel.runtime.checkpoints import CheckpointStore
from tests.support.emulator import KubeClient, wait_for
from tests.support.local_cluster import LocalCluster, local_cluster, two_worker_gpt_job

pytestmark = pytest.mark.e2e

JOBS = ("bigmodel.dev/v1alpha1", "bigmodeljobs")
EVERY_STEPS = 10


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path) as running:
        yield running


async def _status(kube: KubeClient) -> dict[str, Any]:
    found = await kube.get(*JOBS, "e2e")
    return (found or {}).get("status") or {}


async def _events(kube: KubeClient) -> str:
    return "; ".join(f"{e['reason']}: {e.get('message', '')}" for e in await kube.events(involved_name="e2e"))


async def test_worker_killed_mid_run_is_replaced_and_training_resumes(cluster: LocalCluster, tmp_path: Path) -> None:
    emulator, kubelet = cluster.emulator, cluster.kubelet
    storage = tmp_path / "storage"
    async with KubeClient(emulator.url) as kube:
        await kube.create(
            *JOBS, two_worker_gpt_job("e2e", storage, max_steps=80, every_steps=EVERY_STEPS, max_restarts=1)
        )

        async def checkpointed() -> dict[str, Any] | None:
            status = await _status(kube)
            step = (status.get("lastCheckpoint") or {}).get("step", 0)
            return status if status.get("phase") == "Running" and step >= 2 * EVERY_STEPS else None

        await wait_for(checkpointed, 240, "the job did not reach Running with a second checkpoint within 240 s", 1.0)
        kubelet.kill("e2e-g1-w1", signal.SIGKILL)

        async def replaced() -> dict[str, Any] | None:
            status = await _status(kube)
            return status if status.get("workers", {}).get("replaced", 0) >= 1 else None

        await wait_for(replaced, 60, "the operator did not replace the killed worker pod within 60 s", 0.5)

        async def succeeded() -> dict[str, Any] | None:
            status = await _status(kube)
            assert status.get("phase") != "Failed", f"the job failed: {status.get('message')}"
            return status if status.get("phase") == "Succeeded" else None

        try:
            final = await wait_for(
                succeeded, 300, "the job did not Succeed within 300 s after the worker was replaced", 1.0
            )
        except AssertionError as missed:
            raise AssertionError(f"{missed}; the job's Events: {await _events(kube)}") from None
        assert final["restarts"] == 0, "a worker replacement must not rebuild the cluster"
        assert final["workerFailures"] >= 1, "Ray Train's worker-group restart is not reported"
        assert final["progress"]["step"] == 80 and final["progress"]["percent"] == 100
        assert final["lastCheckpoint"]["step"] == 80
        reasons = [event["reason"] for event in await kube.events(involved_name="e2e")]
        assert "WorkerReplaced" in reasons and "Succeeded" in reasons, reasons

    checkpoints = CheckpointStore(str(storage)).list()
    assert [c.step for c in checkpoints] == [70, 80], "keepLast: 2 in the job's storage"
    model, config = load_model(final["modelUri"])
    assert config["task"] == "gpt" and sum(p.numel() for p in model.parameters()) > 0
