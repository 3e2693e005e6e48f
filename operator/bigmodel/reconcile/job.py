"""The BigModelJob decision: from the job and what is observed, the actions to take and the status to write.

Level-based and idempotent: the same job and observation always give the same plan, and applying a plan
twice creates nothing twice (creations tolerate AlreadyExists, the Ray submission id is deterministic).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from bigmodel.api.job import BigModelJob, BigModelJobStatus, CheckpointRef, Progress, TrainingMetrics
from bigmodel.builders.naming import submission_id
from bigmodel.builders.ray_cluster import dashboard_url, head_pod, head_service, worker_pod
from bigmodel.builders.ray_job import ray_job_submission
from bigmodel.reconcile.observed import (
    MODEL_SPEC_ANNOTATION,
    RUN_SPEC_ANNOTATION,
    JobObservation,
    PodView,
)
from bigmodel.reconcile.plans import ChildChanges, Decision, Event, annotated, clear_validation, digest, invalid_status

TERMINAL = ("Succeeded", "Failed")
CONDITION_OF_PHASE = {
    "Running": "Running",
    "Restarting": "Restarting",
    "Succeeded": "Succeeded",
    "Failed": "Failed",
    "Suspended": "Suspended",
}
POLL_RUNNING_S = 3.0
POLL_STARTING_S = 2.0


@dataclass(kw_only=True)
class JobPlan(ChildChanges):
    """What to do for one job, in order: delete, create, stop, submit, then write the status."""

    status: BigModelJobStatus
    stop_ray_job: str | None = None
    submit: dict[str, Any] | None = None
    ray_head_ip: str | None = None
    delete_job: bool = False


def spec_digests(job: BigModelJob) -> dict[str, str]:
    """Digests of what shapes the model (cannot change under a running job) and of what shapes the run."""
    spec = job.spec.to_wire()
    workload = spec["workload"]
    builtin = workload.get("builtin", {})
    model = {
        "task": builtin.get("task"),
        "options": {k: builtin.get(k) for k in ("digits", "gpt")},
        "entrypoint": workload.get("entrypoint", {}).get("function"),
        "command": workload.get("command"),
    }
    ignored = ("failurePolicy", "activeDeadlineSeconds", "suspend", "ttlSecondsAfterFinished", "cleanPodPolicy")
    run = {key: value for key, value in spec.items() if key not in ignored}
    return {MODEL_SPEC_ANNOTATION: digest(model), RUN_SPEC_ANNOTATION: digest(run)}


class _Decision(Decision):
    """One pass over one job; methods read the observation and fill the plan."""

    status: BigModelJobStatus
    plan: JobPlan

    def __init__(self, job: BigModelJob, seen: JobObservation, poll_s: float) -> None:
        self.job = job
        self.poll_s = poll_s
        self.spec = job.spec
        self.seen = seen
        self.now = seen.now
        self.generation = job.metadata.generation
        status = (job.status or BigModelJobStatus()).model_copy(deep=True)
        self.before = status.model_copy(deep=True)
        status.observed_generation = job.metadata.generation
        clear_validation(status, job.metadata.generation, seen.now)
        self.plan = JobPlan(status=status)
        self.status = status
        self.digests = spec_digests(job)

    # Small verbs.

    def remove_everything(self) -> None:
        """Delete every pod and service of the job, of any generation."""
        self.plan.delete_pods += [p.name for p in self.seen.pods if not p.deleting]
        self.plan.delete_services += [s.name for s in self.seen.services]

    def remove_other_generations(self, keep: int) -> None:
        self.plan.delete_pods += [p.name for p in self.seen.pods if p.generation != keep and not p.deleting]
        self.plan.delete_services += [s.name for s in self.seen.services if s.generation != keep]

    def stop_current_ray_job(self) -> None:
        head = self.seen.head(self.status.cluster_generation)
        ray_job = self.seen.ray_job
        if head is not None and ray_job is not None and ray_job.state in ("PENDING", "RUNNING"):
            self.plan.stop_ray_job = ray_job.submission_id
            self.plan.ray_head_ip = head.pod_ip

    def build_cluster(self, generation: int) -> None:
        self.status.cluster_generation = generation
        self.remove_other_generations(keep=generation)
        objects = [head_service(self.job, generation), head_pod(self.job, generation)]
        objects += [worker_pod(self.job, generation, i) for i in range(self.spec.workers.replicas)]
        self.plan.create += [annotated(obj, self.digests) for obj in objects]
        self.status.ray_job_id = None

    def resume_point(self) -> str:
        checkpoint = self.status.last_checkpoint
        return f"resuming from checkpoint step {checkpoint.step}" if checkpoint else "starting over: no checkpoint yet"

    # Outcomes.

    def finish(self, phase: Literal["Succeeded", "Failed"], reason: str, message: str) -> None:
        self.stop_current_ray_job()
        self.status.phase = phase
        self.status.completion_time = self.status.completion_time or self.now
        self.status.message = message
        self.event("Normal" if phase == "Succeeded" else "Warning", reason, message)
        self.condition(phase, True, reason, message)
        self.finished()

    def finished(self) -> None:
        if self.spec.clean_pod_policy == "All":
            self.remove_everything()
        ttl = self.spec.ttl_seconds_after_finished
        if ttl is not None and self.status.completion_time is not None:
            left = ttl - (self.now - self.status.completion_time).total_seconds()
            if left <= 0:
                self.plan.delete_job = True
            else:
                self.plan.requeue_after = left

    def restart(self, cause: str) -> None:
        """Rebuild the Ray cluster after a failure, within the budget; the new run resumes from the checkpoint."""
        budget = self.spec.failure_policy.max_restarts
        if self.status.restarts >= budget:
            self.finish("Failed", "RestartLimitExceeded", f"{cause}; no restarts left (maxRestarts: {budget})")
            return
        self.status.restarts += 1
        self.build_cluster(self.status.cluster_generation + 1)
        self.status.phase = "Restarting"
        self.status.message = (
            f"{cause}; rebuilding the Ray cluster (restart {self.status.restarts}/{budget}), {self.resume_point()}"
        )
        self.event("Warning", "Restarting", self.status.message)

    def suspend(self) -> None:
        self.stop_current_ray_job()
        self.remove_everything()
        if self.status.phase != "Suspended":
            self.status.phase = "Suspended"
            self.status.message = f"suspended: pods deleted, checkpoints kept; {self.resume_point()} when resumed"
            self.event("Normal", "Suspended", self.status.message)

    # The pass.

    def decide(self) -> JobPlan:
        status = self.status
        if status.phase in TERMINAL:
            self.finished()
        elif self.spec.suspend:
            self.suspend()
        elif self.deadline_passed():
            limit = self.spec.active_deadline_seconds
            self.finish("Failed", "DeadlineExceeded", f"the job ran longer than activeDeadlineSeconds ({limit} s)")
        else:
            self.converge()
        self.summarize()
        return self.plan

    def deadline_passed(self) -> bool:
        limit = self.spec.active_deadline_seconds
        start = self.status.start_time
        return limit is not None and start is not None and (self.now - start).total_seconds() > limit

    def converge(self) -> None:
        status = self.status
        if status.phase == "Suspended" or status.cluster_generation == 0:
            resumed = status.phase == "Suspended"
            status.start_time = self.now if resumed or status.start_time is None else status.start_time
            self.build_cluster(status.cluster_generation + 1)
            status.phase = "Starting"
            status.message = (
                f"creating Ray cluster {self.cluster_label()}: 1 head, {self.spec.workers.replicas} workers"
            )
            self.event("Normal", "Resumed" if resumed else "Created", status.message)
            self.plan.requeue_after = POLL_STARTING_S
            return

        generation = status.cluster_generation
        self.remove_other_generations(keep=generation)
        head = self.seen.head(generation)
        if head is None or head.failed:
            why = f"head pod failed: {head.failure or head.phase}" if head else "head pod lost"
            self.restart(why)
            return
        if self.spec_changed(head):
            return
        self.replace_workers(generation)
        self.follow_ray_job(head)

    def cluster_label(self) -> str:
        return f"{self.job.metadata.name}-g{self.status.cluster_generation}"

    def spec_changed(self, head: PodView) -> bool:
        """A spec edit under a running job: rebuild to apply it, or refuse it when it would change the model."""
        model_key, run_key = MODEL_SPEC_ANNOTATION, RUN_SPEC_ANNOTATION
        if head.annotations.get(model_key, self.digests[model_key]) != self.digests[model_key]:
            self.condition(
                "SpecChangeRejected",
                True,
                "ModelChanged",
                "spec.workload changes the model of a job that already started; it keeps training its model. "
                "Revert the change, or create a new BigModelJob.",
            )
            return False
        if any(c.type == "SpecChangeRejected" for c in self.status.conditions):
            self.condition("SpecChangeRejected", False, "SpecApplied")
        if head.annotations.get(run_key, self.digests[run_key]) == self.digests[run_key]:
            return False
        self.build_cluster(self.status.cluster_generation + 1)
        self.status.phase = "Restarting"
        self.status.message = f"spec changed: rebuilding the Ray cluster with it, {self.resume_point()}"
        self.event("Normal", "SpecApplied", self.status.message)
        return True

    def replace_workers(self, generation: int) -> None:
        workers = self.seen.workers(generation)
        for index, pod in sorted(workers.items()):
            if index >= self.spec.workers.replicas:
                self.plan.delete_pods.append(pod.name)
            elif pod.failed:
                self.plan.delete_pods.append(pod.name)
                self.status.workers.replaced += 1
                self.event(
                    "Warning", "WorkerReplaced", f"worker pod {pod.name} {pod.failure or 'failed'}: replacing it"
                )
        for index in range(self.spec.workers.replicas):
            if index not in workers or workers[index].failed:
                self.plan.create.append(annotated(worker_pod(self.job, generation, index), self.digests))

    def follow_ray_job(self, head: PodView) -> None:
        status = self.status
        expected = submission_id(self.job.metadata.uid or "", status.cluster_generation)
        self.plan.requeue_after = self.poll_s
        if not head.ready or not self.seen.ray_reachable:
            # A restart keeps saying why it restarts, and from where, until the new run is up.
            if status.phase != "Restarting":
                status.phase = "Starting"
                status.message = f"waiting for the Ray head pod {head.name} to be ready"
            self.plan.requeue_after = POLL_STARTING_S
            return
        ray_job = self.seen.ray_job
        if ray_job is None or ray_job.submission_id != expected:
            self.plan.submit = ray_job_submission(self.job, status.cluster_generation)
            self.plan.ray_head_ip = head.pod_ip
            if status.ray_job_id != expected:
                status.ray_job_id = expected
                self.event("Normal", "TrainingSubmitted", f"submitted Ray job {expected}, {self.resume_point()}")
            return
        status.dashboard_url = dashboard_url(head.pod_ip or "")
        if ray_job.state == "SUCCEEDED":
            self.absorb_report()
            self.finish("Succeeded", "Succeeded", self.success_message())
        elif ray_job.state in ("FAILED", "STOPPED"):
            self.absorb_report()
            self.restart(f"Ray job {ray_job.submission_id} {ray_job.state.lower()}: {ray_job.message}".rstrip(": "))
        else:
            self.absorb_report()
            status.phase = "Running"
            status.message = self.running_message()

    def absorb_report(self) -> None:
        report = self.seen.report
        if report is None:
            return
        status = self.status
        status.worker_failures = max(status.worker_failures, report.worker_restarts)
        metrics = report.metrics
        status.metrics = TrainingMetrics(
            loss=metrics.get("loss"),
            samples_per_second=metrics.get("samples_per_second"),
            tokens_per_second=metrics.get("tokens_per_second"),
        )
        eta = metrics.get("eta_seconds")
        status.progress = Progress(
            percent=min(100, int(100 * report.step / report.total_steps)) if report.total_steps else 0,
            step=report.step,
            total_steps=report.total_steps or None,
            epoch=report.epoch,
            eta_seconds=int(eta) if eta is not None else None,
        )
        if report.checkpoint is not None:
            if status.last_checkpoint is None or report.checkpoint.step != status.last_checkpoint.step:
                status.last_checkpoint = CheckpointRef.model_validate(report.checkpoint.model_dump())
        if report.model_uri:
            status.model_uri = report.model_uri

    def running_message(self) -> str:
        progress = self.status.progress
        if not progress.total_steps:
            return "training: waiting for the first step"
        return f"training: step {progress.step}/{progress.total_steps}, epoch {progress.epoch + 1}"

    def success_message(self) -> str:
        model = f"; model at {self.status.model_uri}" if self.status.model_uri else ""
        return f"training finished after {self.status.progress.step} steps{model}"

    def summarize(self) -> None:
        """Worker counts and the phase conditions, derived from everything above."""
        status = self.status
        live = {} if status.phase in ("Suspended",) else self.seen.workers(status.cluster_generation)
        desired = 0 if status.phase in TERMINAL + ("Suspended",) else self.spec.workers.replicas
        ready = sum(1 for index, pod in live.items() if index < desired and pod.ready and not pod.failed)
        status.workers.desired, status.workers.ready = desired, ready
        status.workers_ready = f"{ready}/{desired}"
        self.condition("Created", status.cluster_generation > 0, "ClusterCreated" if status.cluster_generation else "")
        for phase, type_ in CONDITION_OF_PHASE.items():
            if status.phase == phase:
                self.condition(type_, True, phase, status.message)
            elif any(c.type == type_ for c in status.conditions):
                self.condition(type_, False, status.phase, "")
        if status.phase != self.before.phase and status.phase in ("Running",):
            self.event("Normal", "Running", status.message)


def decide_job(job: BigModelJob, seen: JobObservation, poll_s: float = POLL_RUNNING_S) -> JobPlan:
    """The plan for one job. Pure: no I/O, the clock comes in the observation."""
    return _Decision(job, seen, poll_s).decide()


def validation_plan(
    status: BigModelJobStatus | None, generation: int | None, errors: list[str], now: datetime
) -> JobPlan:
    """An invalid spec: say where and why, create nothing, and wait for the next edit (no retries)."""
    updated, first_time = invalid_status(status or BigModelJobStatus(), generation, errors, now)
    plan = JobPlan(status=updated)
    if first_time:
        plan.events.append(Event("Warning", "ValidationFailed", "; ".join(errors)))
    return plan
