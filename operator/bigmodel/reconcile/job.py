"""The BigModelJob decision: from the job and what is observed, the actions to take and the status to write.

A job runs one Ray cluster at a time (reconcile/cluster.py builds, watches and removes it) and one Ray job on it that
trains. What is the job's own: submitting and following that Ray job, the restart budget, suspend, the deadline,
spec edits under a running job, and the progress the driver reports (job_status.py). Level-based and idempotent:
the same job and observation always give the same plan, and applying a plan twice creates nothing twice.
"""

from __future__ import annotations

from typing import Literal

from bigmodel.api.job import BigModelJob, BigModelJobStatus
from bigmodel.api.wire import MODEL_SPEC_ANNOTATION, RUN_SPEC_ANNOTATION
from bigmodel.builders.naming import submission_id
from bigmodel.builders.ray_cluster import checkpoint_claim, dashboard_url
from bigmodel.builders.ray_job import ray_job_submission
from bigmodel.reconcile.decision import Decision, digest
from bigmodel.reconcile.job_observed import JobObservation
from bigmodel.reconcile.job_status import absorb_report, resume_point, running_message, success_message
from bigmodel.reconcile.observed import ClusterObservation, PodView
from bigmodel.reconcile.plans import Outcome, Plan, StopJob, SubmitJob

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

JobPlan = Plan[BigModelJobStatus]


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


class JobDecision(Decision[BigModelJob, JobObservation, BigModelJobStatus]):
    """One pass over one job; methods read the observation and fill the plan."""

    def __init__(self, job: BigModelJob, seen: JobObservation, poll_s: float) -> None:
        self.digests = spec_digests(job)
        status = job.status or BigModelJobStatus()
        super().__init__(job, seen, status, claim=checkpoint_claim(job), stamp=self.digests)
        self.job = job
        self.spec = job.spec
        self.poll_s = poll_s

    # Small verbs.

    def stop_current_ray_job(self) -> None:
        head = self.seen.head(self.status.cluster_generation)
        ray_job = self.seen.ray_job
        if head is not None and head.pod_ip and ray_job is not None and ray_job.state in ("PENDING", "RUNNING"):
            self.plan.ray.append(StopJob(head.pod_ip, ray_job.submission_id))

    def build_cluster(self) -> None:
        """A new generation of the cluster, replacing every other; its run resumes from the latest checkpoint."""
        generation = self.clusters.next_generation(self.status.cluster_generation)
        self.status.cluster_generation = generation
        self.clusters.keep_only(generation)
        self.clusters.build(generation, self.spec.workers.replicas)
        self.status.ray_job_id = None

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
            self.clusters.remove_all()
        ttl = self.spec.ttl_seconds_after_finished
        if ttl is not None and self.status.completion_time is not None:
            left = ttl - (self.now - self.status.completion_time).total_seconds()
            if left <= 0:
                self.plan.delete_owner = True
            else:
                self.plan.requeue_after = left

    def restart(self, cause: str) -> None:
        """Rebuild the Ray cluster after a failure, within the budget; the new run resumes from the checkpoint."""
        budget = self.spec.failure_policy.max_restarts
        if self.status.restarts >= budget:
            self.finish("Failed", "RestartLimitExceeded", f"{cause}; no restarts left (maxRestarts: {budget})")
            return
        self.status.restarts += 1
        self.count(Outcome.RESTARTED)
        self.build_cluster()
        self.status.phase = "Restarting"
        self.status.message = (
            f"{cause}; rebuilding the Ray cluster (restart {self.status.restarts}/{budget}), "
            f"{resume_point(self.status)}"
        )
        self.event("Warning", "Restarting", self.status.message)

    def suspend(self) -> None:
        self.stop_current_ray_job()
        self.clusters.remove_all()
        if self.status.phase != "Suspended":
            self.status.phase = "Suspended"
            self.status.message = f"suspended: pods deleted, checkpoints kept; {resume_point(self.status)} when resumed"
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
        return self.finish_pass()

    def deadline_passed(self) -> bool:
        limit = self.spec.active_deadline_seconds
        start = self.status.start_time
        return limit is not None and start is not None and (self.now - start).total_seconds() > limit

    def converge(self) -> None:
        status = self.status
        if status.phase == "Suspended" or status.cluster_generation == 0:
            resumed = status.phase == "Suspended"
            status.start_time = self.now if resumed or status.start_time is None else status.start_time
            self.build_cluster()
            status.phase = "Starting"
            status.message = (
                f"creating Ray cluster {self.job.metadata.name}-g{status.cluster_generation}: "
                f"1 head, {self.spec.workers.replicas} workers"
            )
            self.event("Normal", "Resumed" if resumed else "Created", status.message)
            self.plan.requeue_after = POLL_STARTING_S
            return

        generation = status.cluster_generation
        self.clusters.keep_only(generation)
        health = self.clusters.health(generation)
        if health.head is None or health.state != "up":
            self.restart(health.why)
            return
        if self.spec_changed(health.head):
            return
        self.replace_workers(generation)
        self.follow_ray_job(health.head)

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
        self.build_cluster()
        self.status.phase = "Restarting"
        self.status.message = f"spec changed: rebuilding the Ray cluster with it, {resume_point(self.status)}"
        self.event("Normal", "SpecApplied", self.status.message)
        return True

    def replace_workers(self, generation: int) -> None:
        """A failed worker pod is recreated in its place; Ray Train restarts the worker group around it."""
        replicas = self.spec.workers.replicas
        workers = self.seen.workers(generation)
        for pod in workers:
            if pod.index is None or pod.index >= replicas:
                self.clusters.remove_pod(pod)
        wanted = [pod for pod in workers if pod.index is not None and pod.index < replicas]
        self.status.workers.replaced += len(self.clusters.replace_failed_workers(wanted))
        running = {pod.index for pod in wanted if not pod.failed}
        self.clusters.add_workers(generation, [index for index in range(replicas) if index not in running])

    def follow_ray_job(self, head: PodView) -> None:
        status = self.status
        expected = submission_id(self.job.metadata.uid or "", status.cluster_generation)
        self.plan.requeue_after = self.poll_s
        if not head.ready or not head.pod_ip or not self.seen.ray_reachable:
            # A restart keeps saying why it restarts, and from where, until the new run is up.
            if status.phase != "Restarting":
                status.phase = "Starting"
                status.message = f"waiting for the Ray head pod {head.name} to be ready"
            self.plan.requeue_after = POLL_STARTING_S
            return
        ray_job = self.seen.ray_job
        if ray_job is None or ray_job.submission_id != expected:
            self.plan.ray.append(SubmitJob(head.pod_ip, ray_job_submission(self.job, status.cluster_generation)))
            if status.ray_job_id != expected:
                status.ray_job_id = expected
                self.event("Normal", "TrainingSubmitted", f"submitted Ray job {expected}, {resume_point(status)}")
            return
        status.dashboard_url = dashboard_url(head.pod_ip)
        if self.seen.report is not None:
            absorb_report(status, self.seen.report)
        if ray_job.state == "SUCCEEDED":
            self.finish("Succeeded", "Succeeded", success_message(status))
        elif ray_job.state in ("FAILED", "STOPPED"):
            self.restart(f"Ray job {ray_job.submission_id} {ray_job.state.lower()}: {ray_job.message}".rstrip(": "))
        else:
            status.phase = "Running"
            status.message = running_message(status.progress)

    def summarize(self) -> None:
        """Worker counts and the phase conditions, derived from everything above."""
        status = self.status
        live = [] if status.phase == "Suspended" else self.seen.workers(status.cluster_generation)
        desired = 0 if status.phase in (*TERMINAL, "Suspended") else self.spec.workers.replicas
        ready = sum(1 for pod in live if (pod.index or 0) < desired and pod.ready and not pod.failed)
        status.workers.desired, status.workers.ready = desired, ready
        status.workers_ready = f"{ready}/{desired}"
        self.condition("Created", status.cluster_generation > 0, "ClusterCreated" if status.cluster_generation else "")
        for phase, type_ in CONDITION_OF_PHASE.items():
            if status.phase == phase:
                self.condition(type_, True, phase, status.message)
            elif any(c.type == type_ for c in status.conditions):
                self.condition(type_, False, status.phase, "")
        if status.phase != self.before.phase and status.phase == "Running":
            self.event("Normal", "Running", status.message)


def decide_job(job: BigModelJob, seen: JobObservation, poll_s: float = POLL_RUNNING_S) -> JobPlan:
    """The plan for one job. Pure: no I/O, the clock comes in the observation."""
    return JobDecision(job, seen, poll_s).decide()


def runs_to_stop(status: BigModelJobStatus | None, seen: ClusterObservation) -> list[StopJob]:
    """The job is being deleted: its run is stopped on every head that may have it."""
    if status is None or not status.ray_job_id:
        return []
    return [StopJob(pod.pod_ip, status.ray_job_id) for pod in seen.pods if pod.role == "head" and pod.pod_ip]
