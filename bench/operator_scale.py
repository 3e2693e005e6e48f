"""How fast the real operator takes N BigModelJobs to Running, and how much memory it needs doing it.

The issue's goal: 1,000 jobs reconciled to Running within 60 s of being created, the operator under 300 MB.

The operator runs as its own process (`bigmodel operator`), unchanged, against the Kubernetes API emulator of the
test tier. This script plays everything else a cluster would:

* a kubelet that marks every new pod Running and Ready with podIP 127.0.0.1 at once (the issue measures the
  operator, not pod start-up);
* Ray, for every head: since every pod IP is 127.0.0.1, one fake Job Submission API on 127.0.0.1:8265 and one
  driver progress endpoint on 127.0.0.1:8270 answer for all heads; a submitted job is RUNNING at once;
* the user: it creates the jobs as fast as the emulator takes them and notes when each is first seen Running.

Running-job polling is not what is measured, so BIGMODEL_POLL_RUNNING_S defaults to 30 s. A pod event triggers the
pass that submits a job's run once its pods are ready, and the job is Running on the pass after that: woken by a
later pod event if there is one, else at the next poll (after a submission, the job looks again after
BIGMODEL_POLL_RUNNING_S), so with the default some jobs take about 30 s; `--poll-running-s 3` is the product's own.

The operator's API requests and CPU are counted from the first create until SETTLE_S after the last job was seen
Running (Kopf posts the last Events from its own queue); then, with every job Running and nothing moving, its API
requests over --steady-s more seconds (each job is still passed every BIGMODEL_POLL_RUNNING_S, polling Ray).

Where the time goes: the emulator runs in a thread of this process, sharing one GIL with the kubelet, the fake Ray
servers and the Running poller; the CPU seconds of the operator process and of each of these threads are printed so
that a run shows which side was saturated.

    python -m bench.operator_scale                  # 200 jobs, 1 worker each
    python -m bench.operator_scale --jobs 1000
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench import bench_parser
from bench.fake_cluster import (
    JOBS,
    NAMESPACE,
    FakeRay,
    Kubelet,
    job_manifest,
    log_errors,
    log_tail,
    operator_process,
    wait_for_operator,
)

# The API emulator is test infrastructure and lives with the tests.
from tests.support.emulator import PROJECT_CRDS, ApiCall, Emulator, KubeClient, running_emulator

SAMPLE_S = 0.2
POLL_S = 0.2
SETTLE_S = 5.0
GOAL_JOBS = 1000
GOAL_SECONDS = 60.0
GOAL_RSS_MB = 300.0
MB = 1024 * 1024


@dataclass
class RssSampler:
    """The operator's resident memory (with any children), sampled in a thread."""

    process: psutil.Process
    peak: int = 0
    first: int = 0
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss = self.process.memory_info().rss
                rss += sum(child.memory_info().rss for child in self.process.children(recursive=True))
            except psutil.Error:  # the operator ended (or a child did mid-sample); the caller notices the former
                rss = 0
            if rss:
                self.first = self.first or rss
                self.peak = max(self.peak, rss)
                self.samples += 1
            self._stop.wait(SAMPLE_S)


@dataclass
class Timeline:
    """Per job, when its creation was answered and when it was first seen Running (monotonic seconds)."""

    created: dict[str, float] = field(default_factory=dict)
    running: dict[str, float] = field(default_factory=dict)
    creation_started: float = 0.0
    creation_ended: float = 0.0
    list_calls: int = 0
    list_seconds: float = 0.0


@dataclass
class Cost:
    """What the operator spent: up to SETTLE_S after all were Running, and while they kept running."""

    calls: list[ApiCall]
    cpu_s: float
    steady_s: float = 0.0
    steady_calls: list[ApiCall] = field(default_factory=list)
    steady_ray: Counter[str] = field(default_factory=Counter)


def steady_cost(emulator: Emulator, ray: FakeRay, seconds: float) -> tuple[list[ApiCall], Counter[str]]:
    """The operator's API requests and Ray requests over `seconds`, from now."""
    calls, ray_requests = len(emulator.operator_calls()), Counter(ray.record.requests)
    time.sleep(seconds)
    return emulator.operator_calls()[calls:], ray.record.requests - ray_requests


def by_kind(calls: list[ApiCall]) -> str:
    kinds = Counter(f"{call.verb} {call.resource}{'/' + call.subresource if call.subresource else ''}" for call in calls)
    return ", ".join(f"{kind} {n}" for kind, n in kinds.most_common())


async def create_jobs(kube: KubeClient, count: int, workers: int, concurrency: int, timeline: Timeline) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def create(index: int) -> None:
        async with gate:
            created = await kube.create(*JOBS, job_manifest(f"scale-{index:04d}", workers), namespace=NAMESPACE)
        timeline.created[created["metadata"]["name"]] = time.monotonic()

    timeline.creation_started = time.monotonic()
    await asyncio.gather(*(create(index) for index in range(count)))
    timeline.creation_ended = time.monotonic()


async def watch_running(kube: KubeClient, count: int, deadline: float, timeline: Timeline,
                        operator: subprocess.Popen[bytes]) -> None:
    """One list call per poll: the created jobs it does not return (phase != Running) are Running.

    Selecting the jobs not yet Running keeps the poll's own load on the emulator shrinking as the run goes on,
    instead of serializing every finished job five times a second.
    """
    while len(timeline.running) < count and time.monotonic() < deadline and operator.poll() is None:
        waiting = set(timeline.created) - set(timeline.running)  # taken before the list: all of them exist by then
        started = time.monotonic()
        listed = await kube.list(*JOBS, namespace=NAMESPACE, field_selector="status.phase!=Running")
        seen = time.monotonic()
        timeline.list_calls += 1
        timeline.list_seconds += seen - started
        for name in waiting - {job["metadata"]["name"] for job in listed}:
            timeline.running[name] = seen
        await asyncio.sleep(POLL_S)


async def drive(emulator: Emulator, args: argparse.Namespace, timeline: Timeline, kubelet: Kubelet,
                operator: subprocess.Popen[bytes]) -> None:
    kubelet_task = asyncio.create_task(kubelet.run())
    try:
        await asyncio.wait_for(kubelet.watching.wait(), 10)
        async with KubeClient(emulator.url) as kube:
            deadline = time.monotonic() + args.timeout
            creating = asyncio.create_task(create_jobs(kube, args.jobs, args.workers, args.concurrency, timeline))
            await watch_running(kube, args.jobs, deadline, timeline, operator)
            await creating
    finally:
        kubelet_task.cancel()
        try:
            await kubelet_task
        except asyncio.CancelledError:
            pass


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))]


def thread_cpu(process: psutil.Process, threads: dict[str, int]) -> dict[str, float]:
    """CPU seconds of this process's named threads (by native id), and of all the others together."""
    times = {thread.id: thread.user_time + thread.system_time for thread in process.threads()}
    named = {name: times.get(native_id, 0.0) for name, native_id in threads.items()}
    named["other"] = sum(times.values()) - sum(named.values())
    return named


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def report(args: argparse.Namespace, timeline: Timeline, rss: RssSampler, cpu: dict[str, float], wall: float,
           cost: Cost, ray: FakeRay, kubelet: Kubelet) -> bool:
    """Print the figures; whether every job reached Running."""
    count, pods = args.jobs, args.jobs * (1 + args.workers)
    latencies = [timeline.running[name] - timeline.created[name] for name in timeline.running]
    creation = timeline.creation_ended - timeline.creation_started
    print(f"jobs: {count}, workers per job: {args.workers}, pods: {pods} (+{count} head services)")
    print(f"creation: {creation:.2f} s for {count} jobs ({count / creation:.0f} jobs/s, {args.concurrency} at a time)")
    all_running = len(timeline.running) == count
    if latencies:
        print(
            "create -> Running latency: "
            + ", ".join(f"{label} {percentile(latencies, q):.2f} s" for label, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)))
            + f", max {max(latencies):.2f} s"
        )
    done_at = max(timeline.running.values(), default=timeline.creation_started) - timeline.creation_started
    if all_running:
        print(f"all Running: {done_at:.2f} s after the first create ({count / done_at:.1f} jobs/s)")
    else:
        print(f"NOT all Running: {len(timeline.running)}/{count} within the {args.timeout:.0f} s timeout")
    print(f"operator peak RSS: {rss.peak / MB:.0f} MB (first sample {rss.first / MB:.0f} MB, {rss.samples} samples)")
    print(f"CPU over the {wall:.1f} s run: " + ", ".join(f"{name} {seconds:.1f} s ({100 * seconds / wall:.0f}%)"
                                                        for name, seconds in cpu.items()))
    print(f"operator CPU to Running (+{SETTLE_S:.0f} s): {cost.cpu_s:.2f} s, {1000 * cost.cpu_s / count:.1f} ms per job")
    calls = cost.calls
    print(f"operator API requests to Running (+{SETTLE_S:.0f} s): {len(calls)} ({len(calls) / count:.1f} per job): "
          + by_kind(calls))
    if cost.steady_s:
        per_minute = len(cost.steady_calls) / count * 60 / cost.steady_s
        print(f"steady, {cost.steady_s:.0f} s with all Running: {len(cost.steady_calls)} operator API requests "
              f"({per_minute:.2f} per job per minute){': ' + by_kind(cost.steady_calls) if cost.steady_calls else ''}; "
              "Ray requests meanwhile: " + ", ".join(f"{k} {n}" for k, n in sorted(cost.steady_ray.items())))
    print("Ray requests: " + ", ".join(f"{kind} {n}" for kind, n in sorted(ray.record.requests.items()))
          + f"; pods marked ready: {kubelet.marked}")
    if timeline.list_calls:
        print(f"Running poll: {timeline.list_calls} list calls, mean {1000 * timeline.list_seconds / timeline.list_calls:.0f} ms")
    if count >= GOAL_JOBS:
        met = all_running and done_at <= GOAL_SECONDS
        verdict = f"{'MET' if met else 'NOT MET'} ({len(timeline.running)}/{count} Running, last at {done_at:.1f} s)"
    else:
        verdict = f"not judged: {count} jobs here; run with --jobs {GOAL_JOBS}"
    print(f"goal: {GOAL_JOBS} jobs Running within {GOAL_SECONDS:.0f} s: {verdict}")
    print(f"goal: operator < {GOAL_RSS_MB:.0f} MB: {'MET' if rss.peak / MB < GOAL_RSS_MB else 'NOT MET'} "
          f"(peak {rss.peak / MB:.0f} MB with {count} jobs)")
    return all_running


def main() -> int:
    parser = bench_parser("bench.operator_scale", __doc__)
    parser.add_argument("--jobs", type=int, default=200, help="BigModelJobs to create (default 200)")
    parser.add_argument("--workers", type=int, default=1, help="worker pods per job (default 1)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for all jobs to reach Running")
    parser.add_argument("--concurrency", type=int, default=32, help="creations in flight at once (default 32)")
    parser.add_argument("--poll-running-s", type=float, default=30.0,
                        help="the operator's BIGMODEL_POLL_RUNNING_S (default 30: polling is not measured)")
    parser.add_argument("--steady-s", type=float, default=30.0,
                        help="seconds to count requests once all are Running (default 30; 0 skips it)")
    parser.add_argument("--operator-log", type=Path, help="keep the operator's log here (default: a temporary file)")
    args = parser.parse_args()
    if args.jobs < 1 or args.workers < 1 or args.concurrency < 1:
        parser.error("--jobs, --workers and --concurrency must be at least 1")

    ray = FakeRay()
    ray.start()
    try:
        with tempfile.TemporaryDirectory(prefix="operator-scale-") as scratch, running_emulator(PROJECT_CRDS) as emulator:
            log_path = args.operator_log or Path(scratch) / "operator.log"
            with operator_process(emulator, args.poll_running_s, log_path) as operator:
                wait_for_operator(emulator, operator, log_path)
                operator_ps, bench_ps = psutil.Process(operator.pid), psutil.Process()
                threads = {thread.name: thread.native_id for thread in threading.enumerate()
                           if thread.name in ("kube-emulator", "fake-ray") and thread.native_id is not None}
                threads["bench loop"] = threading.main_thread().native_id or 0
                rss = RssSampler(operator_ps)
                rss.start()
                operator_cpu, bench_cpu = cpu_seconds(operator_ps), thread_cpu(bench_ps, threads)
                calls = len(emulator.operator_calls())  # what starting up cost is not per job
                started = time.monotonic()
                timeline, kubelet = Timeline(), Kubelet(emulator.url)
                try:
                    asyncio.run(drive(emulator, args, timeline, kubelet, operator))
                finally:
                    rss.stop()
                wall = time.monotonic() - started
                if operator.poll() is not None:
                    print(f"operator_scale: the operator exited with {operator.returncode}:\n{log_tail(log_path)}")
                    return 1
                cpu = {"operator": cpu_seconds(operator_ps) - operator_cpu}
                cpu |= {name: seconds - bench_cpu[name] for name, seconds in thread_cpu(bench_ps, threads).items()}
                time.sleep(SETTLE_S)
                cost = Cost(emulator.operator_calls()[calls:], cpu_seconds(operator_ps) - operator_cpu)
                if args.steady_s > 0 and len(timeline.running) == args.jobs:
                    cost.steady_s = args.steady_s
                    cost.steady_calls, cost.steady_ray = steady_cost(emulator, ray, args.steady_s)
                ok = report(args, timeline, rss, cpu, wall, cost, ray, kubelet)
                if not ok:
                    print(log_errors(log_path))
                return 0 if ok else 1
    finally:
        ray.stop()


if __name__ == "__main__":
    sys.exit(main())
