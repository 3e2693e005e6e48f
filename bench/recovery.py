"""Recovery from a lost worker on the local end-to-end setup: time to the first step after resuming, steps lost.

The whole product runs on this machine (API emulator, the real operator, pods as local processes running
real Ray). A BigModelJob trains; once it has checkpointed twice, one worker pod's processes are killed
(SIGKILL, as an OOM kill or a node loss would). Measured from the kill: the operator replaces the pod,
Ray Train restarts the worker group, and training resumes from the latest checkpoint. The figures come
from the driver's own progress endpoint, polled every 0.1 s; the job reports every step.

    python -m bench.recovery
    python -m bench.recovery --every-steps 5
"""

from __future__ import annotations

import asyncio
import json
import signal
import tempfile
import time
import urllib.request
from pathlib import Path

from bench import bench_parser
from bigmodel.api.training_report import TrainingReport
from bigmodel.api.wire import PROGRESS_PORT

# The local cluster harness lives with the tests; the benchmark reuses it as is.
from tests.support.emulator import KubeClient, wait_for
from tests.support.local_cluster import cluster_token, local_cluster, two_worker_gpt_job

JOBS = ("bigmodel.dev/v1alpha1", "bigmodeljobs")


def read_report(port: int, token: str) -> TrainingReport:
    """The driver's report, read as the operator reads it: with the cluster's Ray token."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/progress", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=2) as response:
        return TrainingReport.model_validate(json.loads(response.read()))


async def measure(work: Path, every_steps: int) -> None:
    with local_cluster(work) as cluster:
        async with KubeClient(cluster.emulator.url) as kube:
            # Every step reported, so the step the failure interrupted is known exactly.
            every_step = [{"name": "BIGMODEL_PROGRESS_INTERVAL_S", "value": "0"}]
            job = two_worker_gpt_job(
                "recovery", work / "storage", max_steps=100000, every_steps=every_steps, max_restarts=0, env=every_step
            )
            await kube.create(*JOBS, job)

            async def checkpointed() -> bool:
                status = ((await kube.get(*JOBS, "recovery")) or {}).get("status") or {}
                return (status.get("lastCheckpoint") or {}).get("step", 0) >= 2 * every_steps

            await wait_for(checkpointed, 300, "no second checkpoint within 300 s", 0.5)
            port = cluster.kubelet.host_port("recovery-g1-head", PROGRESS_PORT)
            token = await cluster_token(kube, "recovery", 1)
            killed_at = time.monotonic()
            cluster.kubelet.kill("recovery-g1-w1", signal.SIGKILL)
            while True:
                report = read_report(port, token)
                if report.worker_restarts >= 1 and report.step > report.resumed_from_step:
                    resumed_after = time.monotonic() - killed_at
                    break
                if time.monotonic() - killed_at > 300:
                    raise SystemExit("training did not resume within 300 s of the kill")
                await asyncio.sleep(0.1)
            await kube.delete(*JOBS, "recovery")

    print(f"checkpoint interval          {every_steps} steps")
    print(f"last step before the failure {report.resumed_from_step + report.steps_redone}")
    print(f"resumed from checkpoint      step {report.resumed_from_step}")
    print(f"steps lost (trained twice)   {report.steps_redone}   (goal <= {every_steps})")
    print(f"kill -> first step resumed   {resumed_after:.1f} s   (goal < 30 s)")


def main() -> None:
    parser = bench_parser("bench.recovery", __doc__)
    parser.add_argument("--every-steps", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        asyncio.run(measure(Path(work), args.every_steps))


if __name__ == "__main__":
    main()
