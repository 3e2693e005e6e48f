"""Recovery of a run from a lost or preempted worker, on the local end-to-end setup.

The whole product runs on this machine (API emulator, the real operator, pods as local processes running real Ray).
A two-worker BigModelJob trains; once it has checkpointed twice, one worker pod is taken away, three ways, each on a
fresh cluster:

- replacement: the pod's processes are killed (SIGKILL, as an OOM kill or a node loss would); the operator replaces
  the pod, Ray Train restarts the worker group on it and resumes from the latest checkpoint (today's path);
- elastic: the same kill, on a job with `minReplicas: 1` whose replacement pod finds no node (the node is cordoned):
  training goes on with the worker it has, resharded from the latest checkpoint;
- sigterm: the pod is deleted with its grace period (a node drain, a spot reclaim): the run checkpoints on the drain and
  resumes from exactly there once the pod is gone.

Measured from the kill or the deletion to the first step trained after the resume, and the steps trained twice. The
figures come from the driver's own progress endpoint, polled every 0.1 s; the job reports every step.

    python -m bench.recovery
    python -m bench.recovery --every-steps 20
"""

from __future__ import annotations

import asyncio
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bench import bench_parser

# The local cluster harness lives with the tests; the benchmark reuses it as is.
from tests.support.emulator import KubeClient, wait_for
from tests.support.local_cluster import DriverProgress, LocalCluster, cluster_token, local_cluster, two_worker_gpt_job

JOBS = ("bigmodel.dev/v1alpha1", "bigmodeljobs")
Way = Literal["replacement", "elastic", "sigterm"]
WAYS: tuple[Way, ...] = ("replacement", "elastic", "sigterm")
RESUME_TIMEOUT_S = 300


@dataclass(frozen=True)
class Recovery:
    way: Way
    seconds: float
    """From the kill or deletion to the first step trained after the resume."""
    last_step: int
    resumed_from: int
    steps_lost: int
    workers_after: int


async def interrupt(cluster: LocalCluster, kube: KubeClient, way: Way, work: Path, every_steps: int) -> Recovery:
    # Every step reported, so the step the failure interrupted is known exactly.
    every_step = [{"name": "BIGMODEL_PROGRESS_INTERVAL_S", "value": "0"}]
    job = two_worker_gpt_job(
        "recovery", work / "storage", max_steps=100000, every_steps=every_steps, max_restarts=0, env=every_step
    )
    job["spec"]["workload"]["builtin"]["epochs"] = 50  # still training when the figure is taken
    if way == "elastic":
        job["spec"]["workers"]["minReplicas"] = 1
    await kube.create(*JOBS, job)

    async def checkpointed() -> bool:
        status = ((await kube.get(*JOBS, "recovery")) or {}).get("status") or {}
        return (status.get("lastCheckpoint") or {}).get("step", 0) >= 2 * every_steps

    await wait_for(checkpointed, 300, "no second checkpoint within 300 s", 0.5)
    progress = DriverProgress(cluster.kubelet, "recovery-g1-head", await cluster_token(kube, "recovery", 1))
    started = time.monotonic()
    if way == "sigterm":
        await kube.delete("v1", "pods", "recovery-g1-w1")
    else:
        if way == "elastic":
            cluster.kubelet.cordon()
        cluster.kubelet.kill("recovery-g1-w1", signal.SIGKILL)
    while True:
        report = progress.read()
        if report is not None and report.worker_restarts >= 1 and report.step > report.resumed_from_step:
            seconds = time.monotonic() - started
            break
        if time.monotonic() - started > RESUME_TIMEOUT_S:
            raise SystemExit(f"{way}: training did not resume within {RESUME_TIMEOUT_S} s")
        await asyncio.sleep(0.1)
    await kube.delete(*JOBS, "recovery")
    return Recovery(
        way=way,
        seconds=seconds,
        last_step=report.resumed_from_step + report.steps_redone,
        resumed_from=report.resumed_from_step,
        steps_lost=report.steps_redone,
        workers_after=report.world_size,
    )


async def measure(work: Path, way: Way, every_steps: int) -> Recovery:
    with local_cluster(work) as cluster:
        async with KubeClient(cluster.emulator.url) as kube:
            return await interrupt(cluster, kube, way, work, every_steps)


def main() -> None:
    parser = bench_parser("bench.recovery", __doc__)
    parser.add_argument("--every-steps", type=int, default=10)
    args = parser.parse_args()
    results: list[Recovery] = []
    for way in WAYS:
        with tempfile.TemporaryDirectory() as work:
            results.append(asyncio.run(measure(Path(work), way, args.every_steps)))
    print(f"checkpoint interval: {args.every_steps} steps")
    print(f"{'way':<12} {'-> first step':>14} {'workers':>8} {'last step':>10} {'resumed from':>13} {'steps lost':>11}")
    for r in results:
        print(
            f"{r.way:<12} {r.seconds:>12.1f} s {r.workers_after:>8} {r.last_step:>10} {r.resumed_from:>13} "
            f"{r.steps_lost:>11}"
        )
    by_way = {r.way: r for r in results}
    ratio = by_way["elastic"].seconds / by_way["replacement"].seconds
    print(f"elastic / replacement time to the first step: {ratio:.2f}   (goal: elastic <= 10 s)")
    print(f"steps lost to a SIGTERM: {by_way['sigterm'].steps_lost}   (goal 0)")


if __name__ == "__main__":
    main()
