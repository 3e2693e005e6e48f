"""Everything a cluster has but the operator, for benches that run the real operator as a process.

* :func:`operator_process` / :func:`start_operator`: `bigmodel operator` against the Kubernetes API emulator;
* :class:`Kubelet`: marks every new pod Running and Ready with the pod IP it is given (and can fail a pod, as a
  kubelet reports a crashed container);
* :class:`FakeRay`: Ray's Job Submission API and the training driver's /progress for every head, in a thread. A head
  is told apart by the local address a request came to, so each head pod may have its own loopback IP; a run
  advances `steps_per_s`, checkpoints every `checkpoint_every` steps, and a new submission of the same job resumes
  from its last checkpoint. With `steps_per_s=0` every run stays RUNNING at step 0 (what a scale bench wants).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

from bigmodel.api.training_report import TrainingReport
from bigmodel.api.wire import PROGRESS_PORT, RAY_DASHBOARD_PORT

# The API emulator is test infrastructure and lives with the tests.
from tests.support.emulator import KUBELET_USER_AGENT, Emulator, JsonObject, api_path

T = TypeVar("T")

LOCAL_IP = "127.0.0.1"
NAMESPACE = "default"
JOBS = ("bigmodel.dev/v1alpha1", "bigmodeljobs")
OPERATOR_READY_S = 60.0
OPERATOR_STOP_S = 20.0


def job_manifest(name: str, workers: int, **spec: Any) -> JsonObject:
    """A small digits job (`spec`: more fields); no checkpoint storage, so the operator's default storage is used."""
    return {
        "apiVersion": "bigmodel.dev/v1alpha1",
        "kind": "BigModelJob",
        "metadata": {"name": name},
        "spec": {
            "workload": {"builtin": {"task": "digits", "epochs": 1}},
            "workers": {"replicas": workers, "resources": {"cpu": "1", "memory": "1Gi"}},
            **spec,
        },
    }


def start_operator(emulator: Emulator, poll_running_s: float, log: Any) -> subprocess.Popen[bytes]:
    """`bigmodel operator` against the emulator, its output appended to the open binary file `log`."""
    env = {
        **os.environ,
        "KUBECONFIG": str(emulator.kubeconfig),
        "BIGMODEL_LIVENESS_PORT": "off",
        "BIGMODEL_METRICS_PORT": "off",
        "BIGMODEL_DEFAULT_STORAGE": "/tmp/bench-storage",
        "BIGMODEL_POLL_RUNNING_S": str(poll_running_s),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "bigmodel.cli", "operator"], env=env, stdout=log, stderr=subprocess.STDOUT
    )


def stop_operator(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, and SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(OPERATOR_STOP_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def operator_process(emulator: Emulator, poll_running_s: float, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`bigmodel operator` against the emulator, for the duration of the block."""
    with log_path.open("ab") as log:
        process = start_operator(emulator, poll_running_s, log)
        try:
            yield process
        finally:
            stop_operator(process)


def log_tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def log_errors(path: Path, lines: int = 5) -> str:
    """How many ERROR records the operator logged, and the last few (its INFO lines are one per handled event)."""
    errors = [line for line in path.read_text(errors="replace").splitlines() if " ERROR " in line]
    return "\n".join([f"{len(errors)} ERROR lines in {path}", *errors[-lines:]])


def wait_for_operator(emulator: Emulator, process: subprocess.Popen[bytes], log_path: Path) -> None:
    """Until the operator watches jobs and pods: jobs created before that would only measure its start-up."""
    deadline = time.monotonic() + OPERATOR_READY_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the operator exited with {process.returncode}:\n{log_tail(log_path)}")
        watched = {call.resource for call in emulator.operator_calls() if call.verb == "watch"}
        if {"bigmodeljobs", "pods"} <= watched:
            return
        time.sleep(0.2)
    raise SystemExit(f"the operator did not watch jobs and pods within {OPERATOR_READY_S} s")


async def same_ip(pod: JsonObject) -> str:
    """Every pod at 127.0.0.1 (one FakeRay on 127.0.0.1 answers for all heads)."""
    return LOCAL_IP


class Kubelet:
    """Marks every new pod Running and Ready, with the IP `pod_ip` gives it, as soon as the pod watch shows it."""

    def __init__(self, url: str, pod_ip: Callable[[JsonObject], Awaitable[str]] = same_ip) -> None:
        self.url = url
        self.pod_ip = pod_ip
        self.marked = 0
        self.watching = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None

    async def run(self) -> None:
        in_flight: set[asyncio.Task[None]] = set()
        seen: set[str] = set()
        headers = {"User-Agent": KUBELET_USER_AGENT}
        # The watch never ends by itself; no read timeout.
        timeout = aiohttp.ClientTimeout(total=None)
        async with aiohttp.ClientSession(self.url, headers=headers, timeout=timeout) as self._session:
            while True:
                async with self._session.get(api_path("v1", "pods", NAMESPACE), params={"watch": "true"}) as response:
                    response.raise_for_status()
                    self.watching.set()
                    async for line in response.content:
                        pod = self._new_pod(line, seen)
                        if pod is not None:
                            task = asyncio.create_task(self._start(pod))
                            in_flight.add(task)
                            task.add_done_callback(in_flight.discard)

    @staticmethod
    def _new_pod(line: bytes, seen: set[str]) -> JsonObject | None:
        """The pod of a watch event, when it is one this kubelet has not started yet."""
        if not line.strip():
            return None
        event = json.loads(line)
        pod = event.get("object") or {}
        metadata = pod.get("metadata") or {}
        if event.get("type") == "DELETED" or metadata.get("deletionTimestamp") or metadata.get("uid") in seen:
            return None
        if (pod.get("status") or {}).get("podIP"):
            return None
        seen.add(metadata["uid"])
        return pod

    async def _start(self, pod: JsonObject) -> None:
        ip = await self.pod_ip(pod)
        status = {
            "phase": "Running",
            "podIP": ip,
            "hostIP": LOCAL_IP,
            "conditions": [{"type": "Ready", "status": "True"}],
        }
        if await self.patch_status(pod["metadata"]["name"], status):
            self.marked += 1

    async def fail(self, name: str) -> bool:
        """Report the pod's container crashed, as a kubelet does: phase Failed, not Ready; False if it is gone."""
        status = {
            "phase": "Failed",
            "conditions": [{"type": "Ready", "status": "False"}],
            "containerStatuses": [
                {"name": "ray", "ready": False, "state": {"terminated": {"exitCode": 137, "reason": "Error"}}}
            ],
        }
        return await self.patch_status(name, status)

    async def patch_status(self, name: str, status: JsonObject) -> bool:
        assert self._session is not None, "the kubelet is not running"
        async with self._session.patch(
            api_path("v1", "pods", NAMESPACE, name, "status"),
            data=json.dumps({"status": status}),
            headers={"Content-Type": "application/merge-patch+json"},
        ) as response:
            if response.status == 404:  # deleted meanwhile
                return False
            response.raise_for_status()
            return True


@dataclass
class Run:
    """One Ray job (submission) on one head; its step follows the clock until it ends."""

    submission_id: str
    head_ip: str
    resumed_from: int
    since: float
    total: int
    steps_per_s: float
    checkpoint_every: int
    state: str = "RUNNING"
    ended_at: float | None = None
    worker_restarts: int = 0

    @property
    def job(self) -> str:
        """`bigmodel-<uid[:8]>`: the submission id less its `-g<generation>`."""
        return self.submission_id.rsplit("-g", 1)[0]

    def step(self, now: float) -> int:
        at = now if self.ended_at is None else self.ended_at
        return min(self.total, self.resumed_from + int((at - self.since) * self.steps_per_s))

    def checkpoint(self, now: float) -> int:
        step = self.step(now)
        return (
            step
            if step == self.total
            else max(self.resumed_from, step // self.checkpoint_every * self.checkpoint_every)
        )

    def state_at(self, now: float) -> str:
        if self.state == "RUNNING" and self.steps_per_s and self.step(now) >= self.total:
            return "SUCCEEDED"
        return self.state

    def end(self, state: str, now: float) -> None:
        self.ended_at = now
        self.state = state

    def report(self, now: float) -> JsonObject:
        step, checkpoint = self.step(now), self.checkpoint(now)
        ref = {"path": f"/tmp/bench-storage/{self.job}/step-{checkpoint}", "step": checkpoint, "epoch": 0}
        report = TrainingReport.model_validate(
            {
                "step": step,
                "total_steps": self.total,
                "epoch": 0,
                "epochs": 1,
                "metrics": {"loss": 1.0},
                "worker_restarts": self.worker_restarts,
                "resumed_from_step": self.resumed_from,
                "checkpoint": ref if checkpoint else None,
                "done": step >= self.total and self.steps_per_s > 0,
            }
        )
        return report.model_dump(mode="json")


@dataclass
class RayRecord:
    """What the fake Ray saw that a bench judges: repeated acceptances and overlapping runs of a job."""

    requests: Counter[str] = field(default_factory=Counter)
    accepted_twice: list[str] = field(default_factory=list)
    """Submission ids accepted by a second head (a head answers a repeat of its own with "already exists")."""
    overlapping: list[str] = field(default_factory=list)
    """Submissions accepted while another run of the same job was RUNNING on a live head."""
    steps_lost: list[int] = field(default_factory=list)
    """Per failure (a head lost, a worker lost), steps done since the run's last checkpoint."""


class FakeRay:
    """Ray for every head, in a thread of its own. `bind`: serve these addresses at start; more with :meth:`serve`."""

    def __init__(
        self,
        *,
        bind: tuple[str, ...] = (LOCAL_IP,),
        steps_per_s: float = 0.0,
        total_steps: int = 100,
        checkpoint_every: int = 10,
    ) -> None:
        self.steps_per_s = steps_per_s
        self.total_steps = total_steps
        self.checkpoint_every = checkpoint_every
        self.record = RayRecord()
        self.runs: dict[tuple[str, str], Run] = {}  # (head IP, submission id) -> run; touched on the server's loop only
        self._latest: dict[str, Run] = {}  # head IP -> the run submitted to it last, whose progress it serves
        self._checkpoints: dict[str, int] = {}  # job -> the step its newest run ended its last checkpoint at
        self._dead: set[str] = set()
        self._bind = bind
        self._sites: dict[str, list[web.TCPSite]] = {}
        self._runners: list[web.AppRunner] = []
        self.thread = threading.Thread(target=self._run, name="fake-ray", daemon=True)
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    def start(self) -> None:
        self.thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise SystemExit(f"cannot serve the fake Ray endpoints: {self._failure}")

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stopping.set)
        self.thread.join(10)

    async def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run `coroutine` on the fake Ray's loop (its state lives there) and wait for it from another loop."""
        assert self._loop is not None, "the fake Ray is not running"
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, self._loop))

    async def serve(self, ip: str) -> None:
        """A new head at `ip`: its dashboard and progress ports start answering (on the fake Ray's loop)."""
        sites = []
        for runner, port in zip(self._runners, (RAY_DASHBOARD_PORT, PROGRESS_PORT), strict=True):
            site = web.TCPSite(runner, ip, port)
            try:
                await site.start()
            except OSError as error:
                raise RuntimeError(f"{ip}:{port} is busy (is a Ray dashboard running?): {error}") from error
            sites.append(site)
        self._sites[ip] = sites

    async def lose_head(self, ip: str) -> None:
        """The head at `ip` died: its ports close and its running run ends, losing the steps since its checkpoint."""
        now = time.monotonic()
        self._dead.add(ip)
        for site in self._sites.pop(ip, []):
            await site.stop()
        run = self._latest.get(ip)
        if run is not None and run.state_at(now) == "RUNNING":
            self.record.steps_lost.append(run.step(now) - run.checkpoint(now))
            self._checkpoints[run.job] = run.checkpoint(now)
            run.end("FAILED", now)

    async def lose_worker(self, ip: str) -> None:
        """A worker of the head at `ip` died: Ray Train restarts the worker group from the run's last checkpoint."""
        now = time.monotonic()
        run = self._latest.get(ip)
        if run is not None and run.state_at(now) == "RUNNING":
            self.record.steps_lost.append(run.step(now) - run.checkpoint(now))
            run.resumed_from, run.since = run.checkpoint(now), now
            run.worker_restarts += 1

    async def run_of(self, submission_id: str) -> tuple[str, str, int] | None:
        """(head IP, state, step) of the run with this submission id on a live head, if any."""
        now = time.monotonic()
        for (ip, sid), run in self.runs.items():
            if sid == submission_id and ip not in self._dead:
                return ip, run.state_at(now), run.step(now)
        return None

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as error:  # reported by start(), in the main thread
            self._failure = error
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        dashboard = web.Application()
        dashboard.router.add_post("/api/jobs/", self._submit)
        dashboard.router.add_get("/api/jobs/{id}", self._status)
        dashboard.router.add_post("/api/jobs/{id}/stop", self._stop)
        progress = web.Application()
        progress.router.add_get("/progress", self._progress)
        try:
            for app in (dashboard, progress):
                runner = web.AppRunner(app, access_log=None)
                await runner.setup()
                self._runners.append(runner)
            for ip in self._bind:
                await self.serve(ip)
            self._ready.set()
            await self._stopping.wait()
        finally:
            for runner in self._runners:
                await runner.cleanup()

    @staticmethod
    def _head(request: web.Request) -> str:
        """The head a request is for: the local address it came to."""
        return str(request.transport.get_extra_info("sockname")[0]) if request.transport else LOCAL_IP

    async def _submit(self, request: web.Request) -> web.Response:
        self.record.requests["submit"] += 1
        head, now = self._head(request), time.monotonic()
        submission_id = (await request.json())["submission_id"]
        if (head, submission_id) in self.runs:
            # What Ray answers to a repeated submission id; the operator takes it as "the run is there".
            return web.json_response({"detail": f"Job with submission_id {submission_id} already exists."}, status=400)
        run = Run(submission_id, head, 0, now, self.total_steps, self.steps_per_s, self.checkpoint_every)
        run.resumed_from = self._checkpoints.get(run.job, 0)
        if any(sid == submission_id for _, sid in self.runs):
            self.record.accepted_twice.append(submission_id)
        if any(
            other.job == run.job and ip not in self._dead and other.state_at(now) == "RUNNING"
            for (ip, _), other in self.runs.items()
        ):
            self.record.overlapping.append(submission_id)
        self.runs[head, submission_id] = run
        self._latest[head] = run
        return web.json_response({"submission_id": submission_id, "job_id": submission_id})

    async def _status(self, request: web.Request) -> web.Response:
        self.record.requests["status"] += 1
        run = self.runs.get((self._head(request), request.match_info["id"]))
        if run is None:
            return web.json_response({"detail": "not found"}, status=404)
        return web.json_response({"status": run.state_at(time.monotonic()), "message": ""})

    async def _stop(self, request: web.Request) -> web.Response:
        self.record.requests["stop"] += 1
        run, now = self.runs.get((self._head(request), request.match_info["id"])), time.monotonic()
        if run is None:
            return web.json_response({"detail": "not found"}, status=404)
        if run.state_at(now) == "RUNNING":
            self._checkpoints[run.job] = run.checkpoint(now)
            run.end("STOPPED", now)
        return web.json_response({"stopped": True})

    async def _progress(self, request: web.Request) -> web.Response:
        self.record.requests["progress"] += 1
        run = self._latest.get(self._head(request))
        if run is None:
            return web.json_response({"detail": "the driver has not started"}, status=404)
        return web.json_response(run.report(time.monotonic()))
