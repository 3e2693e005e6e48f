"""A chaos run: N BigModelJobs train to the end while the API fails, the operator is killed and pods crash.

The real operator runs as its own process against the Kubernetes API emulator (bench/fake_cluster.py plays the
kubelet and Ray; each pod gets its own 127.77.x.y address, so each head has its own fake Ray whose runs advance,
checkpoint every K steps and resume from the last checkpoint). The run goes:

1. create the jobs (1-2 workers each) and wait until all are Running;
2. steady state, no faults: count the operator's API requests and status writes per job per minute;
3. chaos: random API faults (403/409/429/500) on a share of the operator's calls, a few cut watches, the operator
   SIGKILLed and restarted, heads and workers marked Failed as a kubelet reports a crashed container;
4. faults off, until every job is Succeeded (or the timeout).

What it prints is what a user of the operator cares about: jobs succeeded; restarts and worker replacements counted
(the sum of the statuses) against the head and worker failures injected (the goal: equal); duplicate clusters (two
live heads of different generations of one job, sampled) and duplicate Ray submissions (goal: 0); steps lost per
failure against the checkpoint interval. It exits non-zero only when it cannot run.

    python -m bench.chaos                   # 20 jobs
    python -m bench.chaos --jobs 5 --seed 3
"""

from __future__ import annotations

import asyncio
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench import bench_parser
from bench.fake_cluster import (
    JOBS,
    NAMESPACE,
    FakeRay,
    Kubelet,
    job_manifest,
    log_errors,
    start_operator,
    stop_operator,
    wait_for_operator,
)
from tests.support.emulator import PROJECT_CRDS, Emulator, Fault, JsonObject, KubeClient, running_emulator

SAMPLE_S = 0.25
INJECT_RETRY_S = 0.5
# Verbs each API fault may hit: a quota refuses creations (403), a conflict needs a write (409); watches are cut
# instead of refused.
FAULT_VERBS = {
    403: ("create",),
    409: ("create", "patch"),
    429: ("get", "list", "create", "patch", "delete"),
    500: ("get", "list", "create", "patch", "delete"),
}


COUNTED_EVENTS = ("Restarting", "WorkerReplaced")
"""The Events of what the figures count, printed beside a job whose counts do not match what was injected."""


@dataclass(frozen=True)
class ChaosConfig:
    jobs: int = 20
    max_workers: int = 2
    fault_rate: float = 0.07
    """The share of the operator's (non-watch) API requests answered with an error during the chaos phase."""
    watch_drops: int = 3
    kills: int = 3
    head_failures: int = 6
    worker_failures: int = 6
    steady_s: float = 20.0
    chaos_s: float = 60.0
    total_steps: int = 600
    steps_per_s: float = 5.0
    checkpoint_every: int = 20
    timeout_s: float = 180.0
    """For every wait: all Running, all Succeeded."""
    poll_running_s: float = 2.0
    seed: int = 1


@dataclass
class Figures:
    jobs: int = 0
    succeeded: int = 0
    phases: Counter[str] = field(default_factory=Counter)
    restarts: int = 0
    replaced: int = 0
    head_failures: int = 0
    worker_failures: int = 0
    not_injected: int = 0
    """Failures the chaos phase ended without finding a settled job for."""
    duplicate_cluster_samples: int = 0
    duplicate_cluster_jobs: set[str] = field(default_factory=set)
    samples: int = 0
    accepted_twice: list[str] = field(default_factory=list)
    overlapping: list[str] = field(default_factory=list)
    steps_lost: list[int] = field(default_factory=list)
    checkpoint_every: int = 0
    api_faults: Counter[str] = field(default_factory=Counter)
    kills: int = 0
    steady_requests_per_job_min: float = 0.0
    steady_status_writes_per_job_min: float = 0.0
    steady_by_kind: Counter[str] = field(default_factory=Counter)
    mismatched_jobs: list[str] = field(default_factory=list)
    """Jobs whose restarts or replacements differ from the failures injected into them: `name: got/injected`."""


def chaos_job(index: int, workers: int) -> JsonObject:
    # Restarts are what is counted here, not a budget that ends the job.
    policy = {"maxRestarts": 100, "maxWorkerFailures": 100}
    return job_manifest(f"chaos-{index:03d}", workers, failurePolicy=policy)


class Operator:
    """The operator process, killed and restarted at will; its output appended to one log."""

    def __init__(self, emulator: Emulator, config: ChaosConfig, log_path: Path) -> None:
        self.emulator, self.config, self.log_path = emulator, config, log_path
        self._log = log_path.open("ab")
        self.process = start_operator(emulator, config.poll_running_s, self._log)
        self.kills = 0

    def kill_and_restart(self) -> None:
        self.process.kill()  # SIGKILL: no chance to finish a pass or write a status
        self.process.wait()
        self.kills += 1
        self.process = start_operator(self.emulator, self.config.poll_running_s, self._log)

    def close(self) -> None:
        stop_operator(self.process)
        self._log.close()


class PodAddresses:
    """A distinct loopback address per pod; a head's fake Ray starts answering there before the pod is Ready."""

    def __init__(self, ray: FakeRay) -> None:
        self.ray = ray
        self._next = 0

    async def __call__(self, pod: JsonObject) -> str:
        self._next += 1
        ip = f"127.77.{self._next // 250}.{self._next % 250 + 1}"
        if pod["metadata"]["name"].endswith("-head"):
            await self.ray.call(self.ray.serve(ip))
        return ip


@dataclass
class Chaos:
    """One run's moving parts and what it injected, per job."""

    config: ChaosConfig
    emulator: Emulator
    operator: Operator
    ray: FakeRay
    kubelet: Kubelet
    kube: KubeClient
    rng: random.Random
    figures: Figures
    uids: dict[str, str] = field(default_factory=dict)
    heads: Counter[str] = field(default_factory=Counter)
    workers: Counter[str] = field(default_factory=Counter)

    async def jobs(self) -> list[JsonObject]:
        return await self.kube.list(*JOBS, namespace=NAMESPACE)

    async def wait_all(self, phase: str, what: str) -> None:
        deadline = time.monotonic() + self.config.timeout_s
        while True:
            phases = Counter((job.get("status") or {}).get("phase", "") for job in await self.jobs())
            if phases[phase] == self.config.jobs:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"not all jobs {what} within {self.config.timeout_s} s: {dict(phases)}")
            if self.operator.process.poll() is not None:
                raise RuntimeError(f"the operator exited with {self.operator.process.returncode}")
            await asyncio.sleep(SAMPLE_S)

    async def sample_clusters(self) -> None:
        """Forever: a job with live heads of two generations at once has two clusters (twice the GPUs)."""
        while True:
            pods = await self.kube.list("v1", "pods", namespace=NAMESPACE)
            generations: dict[str, set[str]] = {}
            for pod in pods:
                name = pod["metadata"]["name"]
                live = not pod["metadata"].get("deletionTimestamp") and (pod.get("status") or {}).get("phase") not in (
                    "Failed",
                    "Succeeded",
                )
                if name.endswith("-head") and live:
                    job, generation = name.removesuffix("-head").rsplit("-g", 1)
                    generations.setdefault(job, set()).add(generation)
            duplicated = {job for job, seen in generations.items() if len(seen) > 1}
            self.figures.samples += 1
            self.figures.duplicate_cluster_samples += bool(duplicated)
            self.figures.duplicate_cluster_jobs |= duplicated
            await asyncio.sleep(SAMPLE_S)

    async def settled_target(self, job: JsonObject) -> tuple[str, str] | None:
        """(head IP, cluster name) of a job whose every injected failure the operator has counted, and whose run is
        RUNNING far enough from its end; else None. A second failure before the first is handled could be absorbed
        by it (a head failure rebuilds the failed worker's cluster too), and would not be countable."""
        name, status = job["metadata"]["name"], job.get("status") or {}
        settled = (
            status.get("phase") == "Running"
            and status.get("restarts", 0) == self.heads[name]
            and (status.get("workers") or {}).get("replaced", 0) == self.workers[name]
        )
        if not settled:
            return None
        generation = status.get("clusterGeneration", 0)
        run = await self.ray.call(self.ray.run_of(f"bigmodel-{self.uids[name][:8]}-g{generation}"))
        margin = self.config.total_steps - 3 * self.config.checkpoint_every
        if run is None or run[1] != "RUNNING" or run[2] > margin:
            return None
        return run[0], f"{name}-g{generation}"

    async def inject_pod_failure(self, role: str, until: float) -> bool:
        """Fail the head or a worker of a random settled job; False when none settled before `until`."""
        while time.monotonic() < until:
            jobs = await self.jobs()
            self.rng.shuffle(jobs)
            for job in jobs:
                target = await self.settled_target(job)
                if target is None:
                    continue
                head_ip, cluster = target
                name = job["metadata"]["name"]
                if role == "head":
                    await self.ray.call(self.ray.lose_head(head_ip))
                    pod = f"{cluster}-head"
                else:
                    pods = await self.kube.list("v1", "pods", namespace=NAMESPACE)
                    workers = [
                        p["metadata"]["name"]
                        for p in pods
                        if p["metadata"]["name"].startswith(f"{cluster}-w")
                        and (p.get("status") or {}).get("phase") == "Running"
                    ]
                    if not workers:
                        continue
                    await self.ray.call(self.ray.lose_worker(head_ip))
                    pod = self.rng.choice(workers)
                if await self.kubelet.fail(pod):
                    (self.heads if role == "head" else self.workers)[name] += 1
                    return True
            await asyncio.sleep(INJECT_RETRY_S)
        return False

    async def chaos_phase(self) -> None:
        """The faults on for chaos_s; kills, watch cuts and pod failures at random moments within it."""
        config, faults = self.config, self.emulator.faults
        faults.seed(config.seed)
        for code, verbs in FAULT_VERBS.items():
            for verb in verbs:
                # A request meets the rules of its verb in turn: share the rate among them.
                share = sum(verb in others for others in FAULT_VERBS.values())
                faults.add(Fault(verb=verb, code=code, probability=config.fault_rate / share))
        start = time.monotonic()
        end = start + config.chaos_s
        moments = sorted(
            [(self.rng.uniform(0, config.chaos_s), "kill") for _ in range(config.kills)]
            + [(self.rng.uniform(0, config.chaos_s), "drop") for _ in range(config.watch_drops)]
            + [(self.rng.uniform(0, config.chaos_s * 0.8), "head") for _ in range(config.head_failures)]
            + [(self.rng.uniform(0, config.chaos_s * 0.8), "worker") for _ in range(config.worker_failures)]
        )
        try:
            for at, action in moments:
                await asyncio.sleep(max(0.0, start + at - time.monotonic()))
                if action == "kill":
                    self.operator.kill_and_restart()
                elif action == "drop":
                    faults.add(Fault(verb="watch", drop_watch=0, times=1))  # cuts one open watch of the operator
                elif not await self.inject_pod_failure(action, end):
                    self.figures.not_injected += 1
            await asyncio.sleep(max(0.0, end - time.monotonic()))
        finally:
            faults.clear()

    async def steady_state(self) -> None:
        """The operator's API requests over steady_s with every job Running and no faults."""
        before = len(self.emulator.operator_calls())
        await asyncio.sleep(self.config.steady_s)
        calls = self.emulator.operator_calls()[before:]
        per = self.config.jobs * self.config.steady_s / 60
        writes = [
            call
            for call in calls
            if call.resource == "bigmodeljobs" and call.subresource == "status" and call.method == "PATCH"
        ]
        self.figures.steady_requests_per_job_min = len(calls) / per
        self.figures.steady_status_writes_per_job_min = len(writes) / per
        self.figures.steady_by_kind = Counter(
            f"{call.verb} {call.resource}{'/' + call.subresource if call.subresource else ''}" for call in calls
        )

    async def tally(self) -> None:
        figures = self.figures
        for job in await self.jobs():
            name, status = job["metadata"]["name"], job.get("status") or {}
            restarts, replaced = status.get("restarts", 0), (status.get("workers") or {}).get("replaced", 0)
            figures.phases[status.get("phase", "")] += 1
            figures.restarts += restarts
            figures.replaced += replaced
            if (restarts, replaced) != (self.heads[name], self.workers[name]):
                events = await self.kube.events(namespace=NAMESPACE, involved_name=name)
                why = "; ".join(
                    f"{e['reason']}: {e.get('message', '')}" for e in events if e["reason"] in COUNTED_EVENTS
                )
                figures.mismatched_jobs.append(
                    f"{name}: restarts {restarts}/{self.heads[name]}, replaced {replaced}/{self.workers[name]} ({why})"
                )
        figures.succeeded = figures.phases["Succeeded"]
        figures.head_failures, figures.worker_failures = sum(self.heads.values()), sum(self.workers.values())
        figures.kills = self.operator.kills
        record = self.ray.record
        figures.accepted_twice, figures.overlapping = list(record.accepted_twice), list(record.overlapping)
        figures.steps_lost = list(record.steps_lost)
        for injection in self.emulator.faults.injected():
            fault = injection.fault
            figures.api_faults["watch cut" if fault.drop_watch is not None else str(fault.code)] += 1


async def drive(chaos: Chaos) -> None:
    config = chaos.config
    kubelet_task = asyncio.create_task(chaos.kubelet.run())
    sampler: asyncio.Task[None] | None = None
    try:
        await asyncio.wait_for(chaos.kubelet.watching.wait(), 10)
        for index in range(config.jobs):
            created = await chaos.kube.create(
                *JOBS, chaos_job(index, chaos.rng.randint(1, config.max_workers)), namespace=NAMESPACE
            )
            chaos.uids[created["metadata"]["name"]] = created["metadata"]["uid"]
        sampler = asyncio.create_task(chaos.sample_clusters())
        await chaos.wait_all("Running", "Running")
        await chaos.steady_state()
        await chaos.chaos_phase()
        await chaos.wait_all("Succeeded", "Succeeded after the chaos")
    finally:
        await chaos.tally()
        for task in (kubelet_task, sampler):
            if task is not None:
                task.cancel()


def run_chaos(config: ChaosConfig, log_path: Path) -> tuple[Figures, str]:
    """One chaos run: its figures, and why it stopped early ("" when every wait ended in time)."""
    figures = Figures(jobs=config.jobs, checkpoint_every=config.checkpoint_every)
    ray = FakeRay(
        bind=(),
        steps_per_s=config.steps_per_s,
        total_steps=config.total_steps,
        checkpoint_every=config.checkpoint_every,
    )
    ray.start()
    try:
        with running_emulator(PROJECT_CRDS) as emulator:
            operator = Operator(emulator, config, log_path)
            try:
                wait_for_operator(emulator, operator.process, log_path)
                return figures, asyncio.run(_drive(config, emulator, operator, ray, figures))
            finally:
                operator.close()
    finally:
        ray.stop()


async def _drive(config: ChaosConfig, emulator: Emulator, operator: Operator, ray: FakeRay, figures: Figures) -> str:
    async with KubeClient(emulator.url) as kube:
        kubelet = Kubelet(emulator.url, PodAddresses(ray))
        chaos = Chaos(config, emulator, operator, ray, kubelet, kube, random.Random(config.seed), figures)
        try:
            await drive(chaos)
        except (TimeoutError, RuntimeError) as stopped:
            return str(stopped)
    return ""


def _mean(values: list[int]) -> float:
    return sum(values) / len(values) if values else 0.0


def report(config: ChaosConfig, figures: Figures, stopped: str) -> None:
    f = figures
    if stopped:
        print(f"STOPPED EARLY: {stopped}")
    print(f"jobs succeeded: {f.succeeded}/{f.jobs} (phases: {dict(f.phases)})")
    print(
        f"restarts counted: {f.restarts} vs head failures injected: {f.head_failures}"
        f" {'(match)' if f.restarts == f.head_failures else '(MISMATCH)'}"
    )
    print(
        f"workers replaced counted: {f.replaced} vs worker failures injected: {f.worker_failures}"
        f" {'(match)' if f.replaced == f.worker_failures else '(MISMATCH)'}"
    )
    if f.not_injected:
        print(f"pod failures not injected (no settled job in time): {f.not_injected}")
    for line in f.mismatched_jobs:
        print(f"  mismatch {line}")
    print(
        f"duplicate clusters: {f.duplicate_cluster_samples} of {f.samples} samples"
        f" (jobs: {sorted(f.duplicate_cluster_jobs) or 'none'})"
    )
    print(
        f"duplicate Ray submissions: {len(f.accepted_twice)} accepted twice {f.accepted_twice or ''},"
        f" {len(f.overlapping)} started while another run of the job ran {f.overlapping or ''}"
    )
    print(
        f"steps lost per failure: mean {_mean(f.steps_lost):.1f}, max {max(f.steps_lost, default=0)}"
        f" over {len(f.steps_lost)} failures (checkpoint every {f.checkpoint_every} steps)"
    )
    print(
        f"API faults injected: {sum(f.api_faults.values())} ("
        + ", ".join(f"{kind} {n}" for kind, n in sorted(f.api_faults.items()))
        + ")"
        + f" at a rate of {config.fault_rate:.0%} for {config.chaos_s:.0f} s"
    )
    print(f"operator kills (SIGKILL): {f.kills}")
    print(
        f"steady state ({config.steady_s:.0f} s, all Running, no faults): "
        f"{f.steady_requests_per_job_min:.1f} API requests and {f.steady_status_writes_per_job_min:.1f}"
        f" status writes per job per minute ("
        + ", ".join(f"{kind} {n}" for kind, n in f.steady_by_kind.most_common())
        + ")"
    )


def main() -> int:
    parser = bench_parser("bench.chaos", __doc__)
    defaults = ChaosConfig()
    for name, value in vars(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value, help=f"default {value}")
    parser.add_argument("--operator-log", type=Path, help="keep the operator's log here (default: a temporary file)")
    args = parser.parse_args()
    config = ChaosConfig(**{name: getattr(args, name) for name in vars(defaults)})
    if config.jobs < 1 or config.max_workers < 1:
        parser.error("--jobs and --max-workers must be at least 1")
    with tempfile.TemporaryDirectory(prefix="chaos-") as scratch:
        log_path = args.operator_log or Path(scratch) / "operator.log"
        started = time.monotonic()
        figures, stopped = run_chaos(config, log_path)
        report(config, figures, stopped)
        print(f"wall time: {time.monotonic() - started:.0f} s; {log_errors(log_path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
