"""The whole product on one machine: the operator, the API emulator, pods run as local processes, real Ray.

The operator renders real Ray head and worker pods; the local kubelet runs their `ray start` commands;
the operator submits the training through Ray's job API on the head; a worker pod is killed mid-run,
replaced by the operator, and Ray Train resumes from the checkpoint until the job Succeeds. The job's env takes a
value from a Secret: the pods' processes see it, Ray's job API does not.

While it runs, its cluster is attacked as in the README's Security table: every request without its token is refused,
the token of job `beta` included, through Ray's GCS as well as its HTTP APIs. `beta` is made in a namespace the local
kubelet does not run: its pods never start (two Ray heads on one host would share the operator's view of port 8265),
but the operator gives it a token of its own, which every process of beta's pods would have.
"""

from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from bigmodel.api.wire import PROGRESS_PORT, RAY_DASHBOARD_PORT, RAY_GCS_PORT
from bigmodel.runtime.artifacts import load_model
from bigmodel.runtime.checkpoints import CheckpointStore
from tests.support.emulator import KubeClient, wait_for
from tests.support.kubelet import LocalKubelet
from tests.support.local_cluster import (
    LocalCluster,
    cluster_token,
    local_cluster,
    ray_dashboard_get,
    two_worker_gpt_job,
)
from tests.support.ray_attacks import http, http_attacks, joins_gcs, waiting_job

pytestmark = pytest.mark.e2e

JOBS = ("bigmodel.dev/v1alpha1", "bigmodeljobs")
ELSEWHERE = "elsewhere"
EVERY_STEPS = 10
# Enough steps after the second checkpoint for the worker kill to find the run still going.
MAX_STEPS = 400
SECRET_VALUE = "s3cret-e2e-4b1d"
LITERAL_VALUE = "literal-e2e-9c2e"
ENV = [
    {"name": "E2E_TOKEN", "valueFrom": {"secretKeyRef": {"name": "e2e-credentials", "key": "token"}}},
    {"name": "E2E_SETTING", "value": LITERAL_VALUE},
]


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path) as running:
        yield running


async def _status(kube: KubeClient) -> dict[str, Any]:
    found = await kube.get(*JOBS, "e2e")
    return (found or {}).get("status") or {}


async def _events(kube: KubeClient) -> str:
    return "; ".join(f"{e['reason']}: {e.get('message', '')}" for e in await kube.events(involved_name="e2e"))


def pod_environments(kubelet: LocalKubelet, pod: str) -> dict[str, dict[str, str]]:
    """The environment of every live process of a pod the kubelet runs, by command line: its main process and all it
    started (Ray's)."""
    pid = kubelet.pid_of(pod)
    assert pid is not None, f"pod {pod} runs no process"
    main = psutil.Process(pid)
    environments = {}
    for process in (main, *main.children(recursive=True)):
        with contextlib.suppress(psutil.Error):  # a process that ended meanwhile
            environment = process.environ()
            # Empty for a zombie, and for the processes whose title Ray sets (ray::DashboardAgent...): setproctitle
            # reuses the memory that /proc/<pid>/environ shows.
            if environment:
                environments[f"{process.pid} {' '.join(process.cmdline())[:80]}"] = environment
    return environments


async def test_worker_killed_mid_run_is_replaced_and_training_resumes(cluster: LocalCluster, tmp_path: Path) -> None:
    emulator, kubelet = cluster.emulator, cluster.kubelet
    storage = tmp_path / "storage"
    async with KubeClient(emulator.url) as kube:
        await kube.create(
            "v1", "secrets", {"metadata": {"name": "e2e-credentials"}, "stringData": {"token": SECRET_VALUE}}
        )
        await kube.create(
            *JOBS,
            two_worker_gpt_job("e2e", storage, max_steps=MAX_STEPS, every_steps=EVERY_STEPS, max_restarts=1, env=ENV),
        )
        await kube.create(*JOBS, waiting_job("beta", tmp_path / "beta"), namespace=ELSEWHERE)

        # Watched on disk, not through the status a few seconds behind: the kill must land mid-run, and this small
        # model trains at tens of steps a second.
        async def checkpointed() -> int | None:
            latest = CheckpointStore(str(storage)).latest()
            return latest.step if latest is not None and latest.step >= 2 * EVERY_STEPS else None

        await wait_for(checkpointed, 240, "the run wrote no second checkpoint within 240 s", 0.2)
        for pod in ("e2e-g1-head", "e2e-g1-w0"):
            environments = pod_environments(kubelet, pod)
            assert len(environments) > 1, f"pod {pod} started no Ray processes"
            without = [process for process, env in environments.items() if env.get("E2E_TOKEN") != SECRET_VALUE]
            assert not without, f"{pod}: processes without the Secret's value: {without}"
        driver = [process for process in pod_environments(kubelet, "e2e-g1-head") if "job_entrypoint" in process]
        assert driver, "the Ray job's driver is not among the head's processes"
        token = await cluster_token(kube, "e2e", 1)
        jobs = json.dumps(await ray_dashboard_get(kubelet, "e2e-g1-head", "/api/jobs/", token))
        assert "bigmodel.runtime.job_entrypoint" in jobs, "Ray's job API does not list the run"
        for secret in (SECRET_VALUE, LITERAL_VALUE, "E2E_TOKEN", "E2E_SETTING", "e2e-credentials"):
            assert secret not in jobs, f"{secret} is readable through Ray's job API"
        beta_token = await cluster_token(kube, "beta", 1, ELSEWHERE)
        assert token != beta_token
        dashboard = f"http://127.0.0.1:{kubelet.host_port('e2e-g1-head', RAY_DASHBOARD_PORT)}"
        progress = f"http://127.0.0.1:{kubelet.host_port('e2e-g1-head', PROGRESS_PORT)}/progress"
        attacks = http_attacks(dashboard, progress, beta_token)
        accepted = [(attack, status) for attack, status in attacks if status < 400]
        assert not accepted, f"requests without the job's token were served: {accepted}"
        assert {status for _, status in attacks} <= {401, 403}
        # The control: the same requests with the job's own token are served, so what refused them was the token.
        assert http("GET", progress, token) == 200
        kubelet.kill("e2e-g1-w1", signal.SIGKILL)
        # The head outlives its worker: its GCS takes only its own token (checked while Ray Train replaces the worker).
        gcs = f"127.0.0.1:{kubelet.host_port('e2e-g1-head', RAY_GCS_PORT)}"
        assert not joins_gcs(gcs, beta_token), "a driver with beta's token joined the job's cluster"
        assert joins_gcs(gcs, token), "a driver with the job's own token could not join its cluster"

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
        assert final["progress"]["step"] == MAX_STEPS and final["progress"]["percent"] == 100
        assert final["lastCheckpoint"]["step"] == MAX_STEPS
        reasons = [event["reason"] for event in await kube.events(involved_name="e2e")]
        assert "WorkerReplaced" in reasons and "Succeeded" in reasons, reasons

    checkpoints = CheckpointStore(str(storage)).list()
    assert [c.step for c in checkpoints] == [MAX_STEPS - EVERY_STEPS, MAX_STEPS], "keepLast: 2 in the job's storage"
    model, config = load_model(final["modelUri"])
    assert config["task"] == "gpt" and sum(p.numel() for p in model.parameters()) > 0
