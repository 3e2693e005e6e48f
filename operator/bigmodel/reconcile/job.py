"""The BigModelJob decision: from the job and what is observed, the actions to take and the status to write.

A job runs one Ray cluster at a time (reconcile/cluster.py builds, watches and removes it) and one Ray job on it that
trains. What is the job's own: submitting and following that Ray job, the restart budget, suspend, the deadline,
spec edits under a running job, and the progress the driver reports (job_status.py). Level-based and idempotent:
the same job and observation always give the same plan, and applying a plan twice creates nothing twice.
"""

from __future__ import annotations

from typing import Literal

from bigmodel.api.job import BigModelJob, BigModelJobStatus
from bigmodel.api.wire import MODEL_SPEC_ANNOTATION, REPLACES_ANNOTATION, RUN_SPEC_ANNOTATION
from bigmodel.builders.naming import cluster_name, submission_id
from bigmodel.builders.network_policy import OperatorPeer
from bigmodel.builders.ray_cluster import checkpoint_claim, dashboard_url
from bigmodel.builders.ray_job import ray_job_submission
from bigmodel.reconcile.decision import Decision, digest
from bigmodel.reconcile.job_ledger import catch_up, stamp
from bigmodel.reconcile.job_observed import JobObservation
from bigmodel.reconcile.job_status import (
    absorb_report,
    resize_message,
    resume_point,
    running_message,
    success_message,
)
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
PODS_READY = "PodsReady"
ADMITTED = "Admitted"
POLL_RUNNING_S = 3.0
POLL_STARTING_S = 2.0
# Beyond the pods' grace period, how long a new cluster waits for the old one's pods to be gone.
OLD_CLUSTER_MARGIN_S = 30.0

JobPlan = Plan[BigModelJobStatus]


def spec_digests(job: BigModelJob, *, defaults: bool = False) -> dict[str, str]:
    """Digests of what shapes the model (cannot change under a running job) and of what shapes the run.

    Fields at their default are left out, so a new release that adds a defaulted field (or an API server that
    fills one in) changes no digest and rebuilds no running job. `defaults=True` gives the digests of pods built
    before that rule, which kept them.
    """
    if defaults:
        spec = job.spec.to_wire()
    else:
        spec = job.spec.model_dump(by_alias=True, exclude_none=True, exclude_defaults=True, mode="json")
    workload = spec["workload"]
    builtin = workload.get("builtin", {})
    # Options of tasks added later count only where given, so that the digests of jobs without them stay the same.
    options = {k: builtin.get(k) for k in ("digits", "gpt")} | {k: builtin[k] for k in ("causalLm",) if k in builtin}
    model = {
        "task": builtin.get("task"),
        "options": options,
        "entrypoint": workload.get("entrypoint", {}).get("function"),
        "command": workload.get("command"),
    }
    ignored = (
        "failurePolicy",
        "activeDeadlineSeconds",
        "startupDeadlineSeconds",
        "suspend",
        "ttlSecondsAfterFinished",
        "cleanPodPolicy",
    )
    run = {key: value for key, value in spec.items() if key not in ignored}
    return {MODEL_SPEC_ANNOTATION: digest(model), RUN_SPEC_ANNOTATION: digest(run)}


class JobDecision(Decision[BigModelJob, JobObservation, BigModelJobStatus]):
    """One pass over one job; methods read the observation and fill the plan."""

    def __init__(self, job: BigModelJob, seen: JobObservation, poll_s: float, operator: OperatorPeer) -> None:
        self.digests = spec_digests(job)
        self.legacy_digests = spec_digests(job, defaults=True)
        status = (job.status or BigModelJobStatus()).model_copy(deep=True)
        catch_up(status, seen)
        self.replaced_before = status.workers.replaced
        super().__init__(job, seen, status, claim=checkpoint_claim(job), stamp=self.digests, operator=operator)
        self.job = job
        self.spec = job.spec
        self.poll_s = poll_s

    # Small verbs.

    def stop_current_ray_job(self) -> None:
        head = self.seen.head(self.status.cluster_generation)
        ray_job = self.seen.ray_job
        if head is not None and head.pod_ip and ray_job is not None and ray_job.state in ("PENDING", "RUNNING"):
            self.plan.ray.append(StopJob(head.ray_head, ray_job.submission_id))

    def build_cluster(self, *, after_old_stopped: bool = False) -> None:
        """A new generation of the cluster, replacing every other; its run resumes from the latest checkpoint.

        The old generation's pods are deleted with their grace period, in which their run checkpoints. With
        `after_old_stopped` the new pods are made only once the old ones are gone (a later pass, `converge`), so
        that the new run resumes from that checkpoint and the old one writes nothing after it.
        """
        generation = self.clusters.next_generation(self.status.cluster_generation)
        self.status.cluster_generation = generation
        self.status.starting_since = self.now
        self.clusters.keep_only(generation)
        if not (after_old_stopped and self.old_clusters_stopping(generation)):
            self.clusters.build(generation, self.spec.workers.replicas)
        self.status.ray_job_id = None
        self.status.workers.training = 0
        self.status.checkpoint_storage = self.spec.checkpoint.storage

    def old_clusters_stopping(self, generation: int) -> bool:
        """Whether pods of another generation are still there, within their grace period and a margin: a lost
        node's pods may stay Terminating for ever."""
        since = self.status.starting_since or self.now
        waited = (self.now - since).total_seconds()
        limit = self.spec.termination_grace_period_seconds + OLD_CLUSTER_MARGIN_S
        return waited < limit and any(pod.generation != generation for pod in self.seen.pods)

    # Outcomes.

    def finish(self, phase: Literal["Succeeded", "Failed"], reason: str, message: str) -> None:
        self.stop_current_ray_job()
        self.status.phase = phase
        self.status.starting_since = None
        self.status.completion_time = self.status.completion_time or self.now
        self.status.message = message
        self.event("Normal" if phase == "Succeeded" else "Warning", reason, message)
        self.condition(phase, True, reason, message)
        # The pods go on the next pass, once the stored status says how the job ended: deleted now, a lost status
        # write would leave the next pass with neither the run nor its outcome, and it would take that for a lost
        # cluster and restart a finished job.
        self.plan.requeue_after = POLL_STARTING_S

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

    def restart(self, cause: str, reason: str = "Restarting") -> None:
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
        self.event("Warning", reason, self.status.message)
        self.condition("Restarting", True, reason, self.status.message)

    def head_disruption(self, generation: int) -> str:
        """Why the cluster took the generation's head pod away, when it said so (its DisruptionTarget condition)."""
        return next((p.disruption for p in self.seen.pods_of(generation) if p.role == "head" and p.disruption), "")

    def rebuild_after_preemption(self, disruption: str) -> None:
        """The cluster took the head away (a drain, an eviction, a preemption, a spot reclaim): its run checkpointed
        on the SIGTERM, and the rebuild resumes from there without spending maxRestarts, as Ray Train does not count a
        preemption against a run's failures."""
        why = f"the head pod was taken away ({disruption}): rebuilding the Ray cluster once its pods stopped"
        self.rebuild_after_stop(why, "Warning", "Preempted")
        self.condition("Restarting", True, "Preempted", self.status.message)

    def rebuild_after_stop(self, why: str, type_: str, reason: str) -> None:
        """A new cluster, made once the old one's pods are gone (their run checkpoints as they stop); no restart."""
        self.build_cluster(after_old_stopped=True)
        self.status.phase = "Restarting"
        self.status.message = f"{why}, {resume_point(self.status)}"
        self.event(type_, reason, self.status.message)

    def suspend(self) -> None:
        # The pods' SIGTERM makes the run checkpoint before Ray stops: the resumed run loses no step.
        self.clusters.remove_all()
        self.status.starting_since = None
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
        stamp(self.plan)
        self.plan.status_on_failure = self.status.model_copy(deep=True)
        self.plan.status_on_failure.workers.replaced = self.replaced_before
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
            self.build_cluster(after_old_stopped=resumed)
            status.phase = "Starting"
            status.message = (
                f"creating Ray cluster {cluster_name(self.job.metadata.name, status.cluster_generation)}: "
                f"1 head, {self.spec.workers.replicas} workers"
            )
            self.event("Normal", "Resumed" if resumed else "Created", status.message)
            self.plan.requeue_after = POLL_STARTING_S
            return

        generation = status.cluster_generation
        self.clusters.keep_only(generation)
        queued = self.waiting_for_admission(generation)
        if self.startup_overdue(generation):
            return
        health = self.clusters.health(generation)
        if health.state == "absent" and status.starting_since is not None:
            self.plan.requeue_after = POLL_STARTING_S
            if self.old_clusters_stopping(generation):
                status.message = (
                    f"waiting for the previous Ray cluster's pods to checkpoint and stop before creating "
                    f"{cluster_name(self.job.metadata.name, generation)}"
                )
                return
            # Never seen running: its creation failed part-way (a quota, a webhook, a lost status write), or it waited
            # for the old cluster to stop. Making what is missing is a retry, not a restart.
            self.clusters.build(generation, self.spec.workers.replicas)
            return
        if health.head is None or health.state != "up":
            disruption = self.head_disruption(generation)
            if disruption:
                self.rebuild_after_preemption(disruption)
            else:
                self.restart(health.why)
            return
        if self.spec_changed(health.head) or queued:
            return
        self.replace_workers(generation)
        self.follow_ray_job(health.head)
        self.report_stuck_pods(generation)

    def waiting_for_admission(self, generation: int) -> bool:
        """Whether the cluster's pods wait in a queue (a scheduling gate holds them, Kueue's until it admits the whole
        group). A queued cluster has not started: its startup clock (startupDeadlineSeconds, the stuck-starting
        alert) runs from admission, not from creation, and nothing needs polling until a gate is lifted (a pod
        update wakes the loop)."""
        gated = self.seen.gated(generation)
        if not gated:
            if any(c.type == ADMITTED and c.status == "False" for c in self.status.conditions):
                self.status.starting_since = self.now
                self.condition(ADMITTED, True, "Admitted", "the scheduler admitted every pod of the cluster")
                cluster = cluster_name(self.job.metadata.name, generation)
                self.event("Normal", "Admitted", f"Ray cluster {cluster} admitted: its pods may now be scheduled")
            return False
        pod = gated[0]
        queue = f" in queue {self.spec.queue_name}" if self.spec.queue_name else ""
        message = f"waiting for admission{queue}: pod {pod.name} is held by scheduling gate {', '.join(pod.gates)}"
        if not any(c.type == ADMITTED and c.status == "False" for c in self.before.conditions):
            self.event("Normal", "Queued", message)
        self.condition(ADMITTED, False, "Queued", message)
        self.status.starting_since = None
        # A restart keeps saying why it restarts, and from where, until the new run is up.
        if self.status.phase != "Restarting":
            self.status.phase = "Pending"
            self.status.message = message
        return True

    def startup_overdue(self, generation: int) -> bool:
        """Fail the job when its cluster has not started its run within spec.startupDeadlineSeconds."""
        limit, since = self.spec.startup_deadline_seconds, self.status.starting_since
        if limit is None or since is None or (self.now - since).total_seconds() <= limit:
            return False
        stuck = self.seen.stuck(generation)
        why = f"pod {stuck[0].name}: {stuck[0].stuck}" if stuck else "its pods never all became ready"
        self.finish(
            "Failed",
            "StartupDeadlineExceeded",
            f"the Ray cluster did not start the run within startupDeadlineSeconds ({limit} s): {why}",
        )
        return True

    def report_stuck_pods(self, generation: int) -> None:
        """Pods that cannot start (no node fits, the image cannot be pulled, a Secret is missing) put the job in
        Pending with the scheduler's or kubelet's words, in a PodsReady condition and one Event per problem."""
        stuck = self.seen.stuck(generation)
        if not stuck:
            if any(c.type == PODS_READY and c.status == "False" for c in self.status.conditions):
                self.condition(PODS_READY, True, "PodsStarted")
            return
        pod = stuck[0]
        reason = pod.stuck.split(":", 1)[0]
        message = f"pod {pod.name}: {pod.stuck}" + (f" (and {len(stuck) - 1} more)" if len(stuck) > 1 else "")
        if not any(c.type == PODS_READY and c.message == message for c in self.before.conditions):
            self.event("Warning", reason, message)
        self.condition(PODS_READY, False, reason, message)
        if self.status.phase == "Running" and self.enough_workers_for_elastic_run(generation):
            return  # it trains on the workers it has, and grows when the stuck ones start
        self.status.phase = "Pending"
        self.status.message = f"pods cannot start: {message}"
        self.plan.requeue_after = POLL_STARTING_S

    def enough_workers_for_elastic_run(self, generation: int) -> bool:
        fewest = self.spec.workers.min_replicas
        ready = sum(1 for pod in self.seen.workers(generation) if pod.ready and not pod.failed)
        return fewest is not None and ready >= fewest

    def spec_changed(self, head: PodView) -> bool:
        """A spec edit under a running job: rebuild to apply it, or refuse it when it would change the model."""
        if not self.built_from_this_spec(head, MODEL_SPEC_ANNOTATION):
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
        if self.built_from_this_spec(head, RUN_SPEC_ANNOTATION):
            return False
        why = "spec changed: rebuilding the Ray cluster with it once the run checkpointed and stopped"
        self.rebuild_after_stop(why, "Normal", "SpecApplied")
        return True

    def built_from_this_spec(self, head: PodView, key: str) -> bool:
        """Whether the head's digest under `key` is this spec's, by today's rule or the one it was built under."""
        built = head.annotations.get(key, self.digests[key])
        return built in (self.digests[key], self.legacy_digests[key])

    def replace_workers(self, generation: int) -> None:
        """A failed or vanished worker pod is replaced by a new one under a fresh name (the old name stays taken while
        the old pod terminates); Ray Train restarts the worker group around it.

        A failed pod is deleted only once a pod that names it in REPLACES_ANNOTATION exists: whichever step of a pass
        fails, the next pass neither replaces nor counts the same failure twice.
        """
        replicas = self.spec.workers.replicas
        workers = self.seen.workers(generation)
        replaced = {pod.annotations.get(REPLACES_ANNOTATION) for pod in workers}
        failed = [pod for pod in workers if pod.failed]
        for pod in failed:
            if pod.name in replaced:
                self.clusters.remove_pod(pod)
        fresh = [pod for pod in failed if pod.name not in replaced]
        for pod in fresh:
            self.clusters.announce_replacement(pod)
        self.status.workers.replaced += len(fresh)
        live = [pod for pod in workers if not pod.failed]
        for pod in live[replicas:]:
            self.clusters.remove_pod(pod)
        indexes = self.clusters.free_worker_indexes(generation, replicas - len(live))
        self.clusters.add_workers(generation, indexes, [{REPLACES_ANNOTATION: pod.name} for pod in fresh])

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
            self.plan.ray.append(SubmitJob(head.ray_head, ray_job_submission(self.job, status.cluster_generation)))
            if status.ray_job_id != expected:
                status.ray_job_id = expected
                self.event("Normal", "TrainingSubmitted", f"submitted Ray job {expected}, {resume_point(status)}")
            # Ray says within moments that the run started, and nothing wakes the loop when it does.
            self.plan.requeue_after = POLL_STARTING_S
            return
        status.dashboard_url = dashboard_url(head.pod_ip)
        if self.seen.report is not None:
            absorb_report(status, self.seen.report)
            resized = resize_message(
                self.before.workers.training, status.workers.training, self.spec.workers.replicas, status
            )
            if resized is not None:
                self.event(
                    "Normal" if status.workers.training > self.before.workers.training else "Warning",
                    "WorkersResized",
                    resized,
                )
            for uri in status.skipped_checkpoints:
                if uri not in self.before.skipped_checkpoints:
                    why = self.seen.report.skipped_checkpoints.get(uri, "")
                    self.event(
                        "Warning",
                        "CheckpointSkipped",
                        f"checkpoint {uri} would not load ({why}): resumed from the one before it",
                    )
            diverged = sorted(set(status.metrics.non_finite) - set(self.before.metrics.non_finite))
            if diverged:
                self.event(
                    "Warning",
                    "NonFiniteMetrics",
                    f"{', '.join(diverged)} became NaN or infinite at step {status.progress.step}: the run may have "
                    "diverged",
                )
        if ray_job.state == "SUCCEEDED":
            self.finish("Succeeded", "Succeeded", success_message(status))
        elif ray_job.state == "FAILED" and ray_job.cannot_run:
            self.finish("Failed", "CannotRun", f"Ray job {ray_job.submission_id} cannot run: {ray_job.message}")
        elif ray_job.state in ("FAILED", "STOPPED"):
            self.restart(f"Ray job {ray_job.submission_id} {ray_job.state.lower()}: {ray_job.message}".rstrip(": "))
        else:
            status.phase = "Running"
            status.starting_since = None
            status.message = running_message(status)
            self.watch_for_stall()

    def watch_for_stall(self) -> None:
        """Restart a run whose step has not moved for failurePolicy.stallTimeoutSeconds while Running: a hung
        collective, data loader or storage, which Ray sees as a healthy job. The clock is in the status, so an operator
        restart does not reset it."""
        status, before = self.status, self.before
        if (
            status.progress.moved_time is None
            or before.phase != "Running"
            or status.progress.step != before.progress.step
        ):
            status.progress.moved_time = self.now
            return
        limit = self.spec.failure_policy.stall_timeout_seconds
        idle = (self.now - status.progress.moved_time).total_seconds()
        if limit is not None and idle > limit:
            self.stop_current_ray_job()
            self.restart(
                f"no progress for {idle:.0f} s at step {status.progress.step} (stallTimeoutSeconds: {limit})",
                reason="Stalled",
            )

    def summarize(self) -> None:
        """Worker counts and the phase conditions, derived from everything above."""
        status = self.status
        live = [] if status.phase == "Suspended" else self.seen.workers(status.cluster_generation)
        desired = 0 if status.phase in (*TERMINAL, "Suspended") else self.spec.workers.replicas
        ready = min(desired, sum(1 for pod in live if pod.ready and not pod.failed))
        status.workers.desired, status.workers.ready = desired, ready
        status.workers.training = min(status.workers.training, desired)
        status.workers_ready = f"{ready}/{desired}"
        self.condition("Created", status.cluster_generation > 0, "ClusterCreated" if status.cluster_generation else "")
        for phase, type_ in CONDITION_OF_PHASE.items():
            if status.phase == phase:
                # The reason a verb gave this pass (DeadlineExceeded, StartupDeadlineExceeded...) stays.
                given = next((c.reason for c in status.conditions if c.type == type_ and c.status == "True"), phase)
                self.condition(type_, True, given, status.message)
            elif any(c.type == type_ for c in status.conditions):
                self.condition(type_, False, status.phase, "")
        if status.phase != self.before.phase and status.phase == "Running":
            self.event("Normal", "Running", status.message)


def decide_job(
    job: BigModelJob, seen: JobObservation, poll_s: float = POLL_RUNNING_S, operator: OperatorPeer | None = None
) -> JobPlan:
    """The plan for one job. Pure: no I/O, the clock comes in the observation."""
    return JobDecision(job, seen, poll_s, operator or OperatorPeer()).decide()


def runs_to_stop(status: BigModelJobStatus | None, seen: ClusterObservation) -> list[StopJob]:
    """The job is being deleted: its run is stopped on every head that may have it."""
    if status is None or not status.ray_job_id:
        return []
    return [StopJob(pod.ray_head, status.ray_job_id) for pod in seen.pods if pod.role == "head" and pod.pod_ip]
