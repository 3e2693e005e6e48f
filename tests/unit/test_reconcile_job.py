"""The BigModelJob lifecycle as pure decisions: a job and an observation in, actions and a status out."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

from bigmodel.api.job import BigModelJob, BigModelJobStatus, CheckpointRef
from bigmodel.api.training_report import TrainingReport
from bigmodel.builders.naming import submission_id
from bigmodel.builders.ray_cluster import head_pod, head_service, worker_pod
from bigmodel.reconcile.decision import validation_plan
from bigmodel.reconcile.job import POLL_STARTING_S, JobPlan, decide_job, spec_digests
from bigmodel.reconcile.job_observed import JobObservation, RayJobView
from bigmodel.reconcile.observed import PodView, RayHead, ServiceView
from bigmodel.reconcile.plans import Outcome, StopJob, SubmitJob

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
UID = "0123456789abcdef"


def make_job(status: BigModelJobStatus | None = None, **spec: Any) -> BigModelJob:
    body = {
        "apiVersion": "bigmodel.dev/v1alpha1",
        "kind": "BigModelJob",
        "metadata": {"name": "demo", "namespace": "team", "uid": UID, "generation": 1},
        "spec": {
            "workload": {"builtin": {"task": "digits"}},
            "workers": {"replicas": 2},
            "checkpoint": {"storage": "s3://bucket/demo"},
            **spec,
        },
    }
    job = BigModelJob.model_validate(body, by_alias=True)
    job.status = status
    return job


def pod(
    obj: dict[str, Any], job: BigModelJob, *, phase: str = "Running", ready: bool = True, exit_code: int = 0
) -> PodView:
    obj["metadata"]["annotations"].update(spec_digests(job))
    obj["status"] = {
        "phase": phase,
        "podIP": "10.0.0.7",
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    if phase == "Failed":
        obj["status"]["containerStatuses"] = [{"state": {"terminated": {"reason": "OOMKilled", "exitCode": exit_code}}}]
    return PodView.from_object(obj)


def cluster(
    job: BigModelJob, generation: int = 1, **overrides: PodView | None
) -> tuple[list[PodView], list[ServiceView]]:
    pods = {"head": pod(head_pod(job, generation, None), job)}
    for index in range(job.spec.workers.replicas):
        pods[f"w{index}"] = pod(worker_pod(job, generation, index, None), job)
    pods.update(overrides)  # type: ignore[arg-type]
    service = head_service(job, generation)["metadata"]["name"]
    return [p for p in pods.values() if p is not None], [ServiceView(service, generation)]


def running(generation: int = 1, **status: Any) -> BigModelJobStatus:
    return BigModelJobStatus.model_validate(
        {
            "phase": "Running",
            "clusterGeneration": generation,
            "startTime": NOW - timedelta(minutes=5),
            "rayJobId": submission_id(UID, generation),
            **status,
        },
        by_alias=True,
    )


def observe(
    job: BigModelJob, state: str | None = "RUNNING", report: TrainingReport | None = None, **kw: Any
) -> JobObservation:
    generation = job.status.cluster_generation if job.status else 1
    pods, services = cluster(job, generation, **kw)
    ray_job = RayJobView(submission_id(UID, generation), state, "boom" if state == "FAILED" else "") if state else None  # type: ignore[arg-type]
    return JobObservation(now=NOW, pods=pods, services=services, ray_reachable=True, ray_job=ray_job, report=report)


def running_observation(pods: list[PodView], services: list[ServiceView], generation: int) -> JobObservation:
    ray_job = RayJobView(submission_id(UID, generation), "RUNNING")
    return JobObservation(now=NOW, pods=pods, services=services, ray_reachable=True, ray_job=ray_job)


def cleanup(job: BigModelJob, plan: JobPlan, seen: JobObservation) -> JobPlan:
    """The pass after `plan`, once its status is stored."""
    job.status = plan.status
    return decide_job(job, seen)


def reasons(plan: JobPlan) -> list[str]:
    return [event.reason for event in plan.events]


def condition(plan: JobPlan, type_: str) -> str | None:
    return next((c.status for c in plan.status.conditions if c.type == type_), None)


def test_a_new_job_builds_its_ray_cluster() -> None:
    job = make_job()
    plan = decide_job(job, JobObservation(now=NOW))
    names = [(obj["kind"], obj["metadata"]["name"]) for obj in plan.create]
    assert names == [
        ("NetworkPolicy", "demo-g1"),
        ("Secret", "demo-g1-ray-token"),
        ("Service", "demo-g1-head"),
        ("Pod", "demo-g1-head"),
        ("Pod", "demo-g1-w0"),
        ("Pod", "demo-g1-w1"),
    ]
    assert plan.status.phase == "Starting" and plan.status.cluster_generation == 1
    assert plan.status.start_time == NOW and plan.status.workers_ready == "0/2"
    assert reasons(plan) == ["Created"] and condition(plan, "Created") == "True"
    assert plan.ray == []


def test_nothing_is_submitted_until_the_head_is_ready() -> None:
    job = make_job(running(phase="Starting", rayJobId=None))
    not_ready = pod(head_pod(job, 1, None), job, ready=False)
    plan = decide_job(job, observe(job, state=None, head=not_ready))
    assert plan.ray == [] and plan.create == [] and plan.status.phase == "Starting"
    assert "waiting for the Ray head pod" in plan.status.message


def test_ready_head_gets_the_training_submitted_once_with_a_deterministic_id() -> None:
    job = make_job(running(phase="Starting", rayJobId=None))
    plan = decide_job(job, observe(job, state=None))
    [submit] = plan.ray_calls(SubmitJob)
    assert submit.submission["submission_id"] == submission_id(UID, 1)
    assert submit.head == RayHead("10.0.0.7", UID, 1) and reasons(plan) == ["TrainingSubmitted"]
    job.status = plan.status
    again = decide_job(job, observe(job, state=None))
    assert again.ray == plan.ray, "the same pass after an operator restart submits the same id"
    assert reasons(again) == [], "no second TrainingSubmitted event"
    assert plan.requeue_after == again.requeue_after == POLL_STARTING_S, "a submitted run is looked at soon"


def test_running_job_reports_progress_metrics_and_checkpoint() -> None:
    job = make_job(running(phase="Starting"))
    checkpoint = CheckpointRef(path="s3://bucket/demo/checkpoints/step-0000000040", step=40, epoch=1, time=NOW)
    report = TrainingReport(
        step=50,
        total_steps=200,
        epoch=1,
        epochs=4,
        metrics={"loss": 0.5, "samples_per_second": 1234.0, "eta_seconds": 30.0},
        worker_restarts=1,
        checkpoint=checkpoint,
    )
    plan = decide_job(job, observe(job, report=report))
    status = plan.status
    assert status.phase == "Running" and condition(plan, "Running") == "True"
    assert (status.progress.percent, status.progress.eta_seconds) == (25, 30)
    assert status.metrics.loss == 0.5 and status.metrics.samples_per_second == 1234.0
    assert status.last_checkpoint is not None and status.last_checkpoint.step == 40
    assert status.worker_failures == 1 and status.workers_ready == "2/2"
    assert status.dashboard_url == "http://10.0.0.7:8265"
    assert "Running" in reasons(plan)


def test_failed_worker_pod_is_replaced_and_counted() -> None:
    job = make_job(running())
    failed = pod(worker_pod(job, 1, 1, None), job, phase="Failed", exit_code=137)
    plan = decide_job(job, observe(job, w1=failed))
    # A fresh name: on a real cluster the failed pod's name stays taken while it terminates (for ever on a lost node).
    [replacement] = plan.create
    assert replacement["metadata"]["name"] == "demo-g1-w2"
    assert replacement["metadata"]["annotations"]["bigmodel.dev/replaces"] == "demo-g1-w1"
    assert plan.delete_pods == [], "the failed pod goes once its replacement exists"
    assert plan.status.workers.replaced == 1 and plan.status.restarts == 0
    assert reasons(plan) == ["WorkerReplaced"] and "OOMKilled (exit code 137)" in plan.events[0].message
    assert plan.outcomes == {Outcome.WORKER_REPLACED: 1}
    assert plan.status_on_failure is not None and plan.status_on_failure.workers.replaced == 0, (
        "if the replacement cannot be made, the next pass counts the failure, not this one"
    )

    job.status = plan.status
    after = decide_job(job, observe(job, w1=failed, w2=pod(replacement, job)))
    assert after.delete_pods == ["demo-g1-w1"] and after.create == []
    assert after.status.workers.replaced == 1 and reasons(after) == [], "one failure, one count"


def test_missing_worker_pod_is_recreated() -> None:
    job = make_job(running())
    plan = decide_job(job, observe(job, w0=None))
    assert [obj["metadata"]["name"] for obj in plan.create] == ["demo-g1-w0"]
    assert plan.status.workers_ready == "1/2"


def test_failed_ray_job_rebuilds_the_cluster_and_resumes_from_the_checkpoint() -> None:
    checkpoint = CheckpointRef(path="s3://bucket/demo/checkpoints/step-0000000040", step=40, epoch=1, time=NOW)
    job = make_job(running(lastCheckpoint=checkpoint.model_dump()))
    plan = decide_job(job, observe(job, state="FAILED"))
    status = plan.status
    assert status.phase == "Restarting" and status.restarts == 1 and status.cluster_generation == 2
    assert sorted(plan.delete_pods) == ["demo-g1-head", "demo-g1-w0", "demo-g1-w1"]
    assert plan.delete_services == ["demo-g1-head"]
    assert plan.delete_access == [("NetworkPolicy", "demo-g1"), ("Secret", "demo-g1-ray-token")]
    assert [obj["metadata"]["name"] for obj in plan.create][:4] == [
        "demo-g2", "demo-g2-ray-token", "demo-g2-head", "demo-g2-head"
    ]  # fmt: skip
    assert "resuming from checkpoint step 40" in status.message and "restart 1/3" in status.message
    assert reasons(plan) == ["Restarting"] and condition(plan, "Restarting") == "True"
    assert plan.outcomes == {Outcome.RESTARTED: 1}
    assert status.ray_job_id is None, "the next pass submits the new generation's run"


def test_lost_head_pod_rebuilds_the_cluster() -> None:
    job = make_job(running())
    plan = decide_job(job, observe(job, state=None, head=None))
    assert plan.status.restarts == 1 and plan.status.cluster_generation == 2
    assert "head pod lost" in plan.status.message and "starting over: no checkpoint yet" in plan.status.message


def test_restart_budget_exhausted_fails_the_job_and_cleans_up() -> None:
    job = make_job(running(restarts=3))
    plan = decide_job(job, observe(job, state="FAILED"))
    assert plan.status.phase == "Failed" and plan.status.restarts == 3
    assert plan.status.completion_time == NOW and condition(plan, "Failed") == "True"
    assert reasons(plan) == ["RestartLimitExceeded"] and "no restarts left (maxRestarts: 3)" in plan.status.message
    assert plan.delete_pods == [] and plan.create == [], "the pods go once the outcome is stored"
    assert len(cleanup(job, plan, observe(job, state="FAILED")).delete_pods) == 3


def test_success_keeps_status_and_model_and_removes_pods() -> None:
    job = make_job(running())
    report = TrainingReport(step=200, total_steps=200, epoch=3, epochs=4, model_uri="s3://bucket/demo/model", done=True)
    plan = decide_job(job, observe(job, state="SUCCEEDED", report=report))
    assert plan.status.phase == "Succeeded" and plan.status.model_uri == "s3://bucket/demo/model"
    assert plan.status.progress.percent == 100 and plan.delete_pods == []
    assert plan.status.workers_ready == "0/0"
    assert len(cleanup(job, plan, observe(job, state="SUCCEEDED", report=report)).delete_pods) == 3
    kept = make_job(running(), cleanPodPolicy="None")
    done = decide_job(kept, observe(kept, state="SUCCEEDED"))
    assert cleanup(kept, done, observe(kept, state="SUCCEEDED")).delete_pods == []


def test_ttl_after_finished_deletes_the_job_when_due() -> None:
    finished = running(phase="Succeeded", completionTime=NOW - timedelta(seconds=30))
    early = decide_job(make_job(finished, ttlSecondsAfterFinished=60), JobObservation(now=NOW))
    assert not early.delete_owner and early.requeue_after == 30
    due = decide_job(make_job(finished, ttlSecondsAfterFinished=10), JobObservation(now=NOW))
    assert due.delete_owner


def test_active_deadline_fails_the_job_and_stops_the_run() -> None:
    job = make_job(running(), activeDeadlineSeconds=60)
    plan = decide_job(job, observe(job))
    assert plan.status.phase == "Failed" and reasons(plan) == ["DeadlineExceeded"]
    assert plan.ray == [StopJob(RayHead("10.0.0.7", UID, 1), submission_id(UID, 1))] and plan.delete_pods == []
    assert len(cleanup(job, plan, observe(job)).delete_pods) == 3


def stopping(pods: list[PodView]) -> list[PodView]:
    """The pods as a pass after their deletion sees them: Terminating, their run checkpointing."""
    return [replace(p, deleting=True) for p in pods]


def test_suspend_deletes_pods_keeps_status_and_resume_builds_a_new_cluster_once_the_old_pods_are_gone() -> None:
    checkpoint = CheckpointRef(path="p", step=40, epoch=1, time=NOW)
    job = make_job(running(restarts=1, lastCheckpoint=checkpoint.model_dump()), suspend=True)
    seen = observe(job)
    plan = decide_job(job, seen)
    assert plan.status.phase == "Suspended" and reasons(plan) == ["Suspended"]
    assert len(plan.delete_pods) == 3 and plan.status.restarts == 1
    # Not through Ray: that would end the run at once, where the pods' SIGTERM has it checkpoint first.
    assert not plan.ray_calls(StopJob)
    resumed = make_job(plan.status, suspend=False)
    waiting = decide_job(resumed, JobObservation(now=NOW, pods=stopping(seen.pods)))
    assert waiting.status.phase == "Starting" and waiting.status.cluster_generation == 2
    assert waiting.status.restarts == 1, "a suspension is not a failure"
    assert reasons(waiting) == ["Resumed"] and waiting.status.start_time == NOW
    assert waiting.create == [], "the new cluster must not start before the old run stopped with its checkpoint"
    resumed.status = waiting.status
    still = decide_job(resumed, JobObservation(now=NOW + timedelta(seconds=5), pods=stopping(seen.pods)))
    assert still.create == [] and "checkpoint and stop" in still.status.message
    gone = decide_job(resumed, JobObservation(now=NOW + timedelta(seconds=10)))
    assert len([o for o in gone.create if o["kind"] == "Pod"]) == 3 and gone.status.restarts == 1
    # A lost node's pods stay Terminating for ever: the wait ends with the grace period and its margin.
    late = NOW + timedelta(seconds=job.spec.termination_grace_period_seconds + 31)
    stuck = decide_job(resumed, JobObservation(now=late, pods=stopping(seen.pods)))
    assert len([o for o in stuck.create if o["kind"] == "Pod"]) == 3


def test_a_head_the_cluster_takes_away_is_rebuilt_after_its_checkpoint_without_spending_a_restart() -> None:
    """A drain evicts the head (DisruptionTarget, EvictionByEvictionAPI): a preemption, not a failure of the job."""
    job = make_job(running(restarts=3), failurePolicy={"maxRestarts": 3})
    pods, services = cluster(job)
    head = next(p for p in pods if p.role == "head")
    evicted = replace(head, deleting=True, disruption="EvictionByEvictionAPI")
    seen = running_observation([evicted, *(p for p in pods if p is not head)], services, 1)
    plan = decide_job(job, seen)
    assert plan.status.phase == "Restarting" and plan.status.restarts == 3, "a preemption spent a restart"
    assert reasons(plan) == ["Preempted"] and condition(plan, "Restarting") == "True"
    assert "EvictionByEvictionAPI" in plan.status.message and plan.status.cluster_generation == 2
    assert plan.create == [], "the new cluster must wait for the old pods, whose run is checkpointing"
    job.status = plan.status
    built = decide_job(job, JobObservation(now=NOW + timedelta(seconds=5)))
    assert len([o for o in built.create if o["kind"] == "Pod"]) == 3 and built.status.restarts == 3
    # Without the cluster's word for it, a lost head is a failure, counted against maxRestarts.
    lost = running_observation([replace(head, deleting=True), *(p for p in pods if p is not head)], services, 1)
    failed = decide_job(make_job(running(restarts=3), failurePolicy={"maxRestarts": 3}), lost)
    assert failed.status.phase == "Failed" and reasons(failed) == ["RestartLimitExceeded"]


def test_the_disruption_target_condition_is_read_from_the_pod() -> None:
    job = make_job(running())
    obj = head_pod(job, 1, None)
    obj["status"] = {"conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}]}
    assert PodView.from_object(obj).disruption == "PreemptionByScheduler"
    obj["status"]["conditions"][0]["status"] = "False"
    assert PodView.from_object(obj).disruption == ""


def test_changed_worker_count_is_applied_by_a_rebuild_after_the_old_run_checkpointed() -> None:
    job = make_job(running())
    pods, services = cluster(job)
    rescaled = make_job(running(), workers={"replicas": 3})
    plan = decide_job(rescaled, running_observation(pods, services, 1))
    assert plan.status.cluster_generation == 2 and plan.status.restarts == 0
    assert reasons(plan) == ["SpecApplied"] and sorted(plan.delete_pods) == ["demo-g1-head", "demo-g1-w0", "demo-g1-w1"]
    # The old run is not stopped through Ray, and the new cluster waits until its pods are gone: the old run
    # checkpoints as they stop, and writes nothing after the new run resumed from that checkpoint.
    assert plan.ray == [] and plan.create == []
    rescaled.status = plan.status
    built = decide_job(rescaled, JobObservation(now=NOW + timedelta(seconds=3)))
    assert len([o for o in built.create if o["kind"] == "Pod"]) == 4


def test_a_change_of_model_under_a_running_job_is_refused_in_a_condition() -> None:
    job = make_job(running())
    pods, services = cluster(job)
    changed = make_job(running(), workload={"builtin": {"task": "gpt"}})
    plan = decide_job(changed, running_observation(pods, services, 1))
    assert condition(plan, "SpecChangeRejected") == "True"
    assert plan.status.cluster_generation == 1 and plan.create == []


def test_pods_of_an_older_generation_are_removed() -> None:
    job = make_job(running(generation=2))
    pods, services = cluster(job, 2)
    old = pod(worker_pod(job, 1, 0, None), job)
    plan = decide_job(job, running_observation([*pods, old], [*services, ServiceView("demo-g1-head", 1)], 2))
    assert plan.delete_pods == ["demo-g1-w0"] and plan.delete_services == ["demo-g1-head"]


def test_invalid_spec_is_reported_once_with_its_field_path() -> None:
    plan = validation_plan(BigModelJobStatus(), 3, ["spec.workers.replicas: must be at least 1"], NOW)
    assert condition(plan, "ValidationFailed") == "True" and plan.status.observed_generation == 3
    assert reasons(plan) == ["ValidationFailed"] and plan.create == [] and plan.requeue_after is None
    again = validation_plan(plan.status, 3, ["spec.workers.replicas: must be at least 1"], NOW)
    assert reasons(again) == [], "the same error is not announced twice"
    fixed = decide_job(make_job(again.status), JobObservation(now=NOW))
    assert condition(fixed, "ValidationFailed") == "False" and fixed.status.phase == "Starting"


def test_condition_transition_time_only_moves_when_the_status_flips() -> None:
    job = make_job(running(phase="Starting"))
    first = decide_job(job, observe(job))
    job.status = first.status
    later = decide_job(job, observe(job).__class__(**{**observe(job).__dict__, "now": NOW + timedelta(minutes=1)}))
    running_condition = next(c for c in later.status.conditions if c.type == "Running")
    assert running_condition.last_transition_time == NOW


# A real cluster's bad days: lost status writes, failed creations, pods that cannot start, a diverged loss.


def test_a_cluster_built_by_a_pass_whose_status_write_failed_is_adopted_not_deleted_or_counted_again() -> None:
    job = make_job(running(phase="Running"))
    lost = decide_job(job, observe(job, state="FAILED"))
    assert lost.status.restarts == 1 and lost.status.cluster_generation == 2
    built = [PodView.from_object(obj) for obj in lost.create if obj["kind"] == "Pod"]
    # The status write failed: the stored status still says generation 1 and no restart; the old pods are going.
    old = [replace(p, deleting=True) for p in cluster(job, 1)[0]]
    seen = JobObservation(now=NOW, pods=[*old, *built], services=[ServiceView("demo-g2-head", 2)])
    plan = decide_job(job, seen)
    assert plan.status.cluster_generation == 2 and plan.status.restarts == 1, "the restart is counted exactly once"
    assert not any(name.startswith("demo-g2") for name in plan.delete_pods), "the cluster being built is kept"
    assert plan.outcomes[Outcome.RESTARTED] == 0 and "Restarting" not in reasons(plan)


def test_an_unreadable_status_never_deletes_the_running_cluster() -> None:
    job = make_job(None)
    pods, services = cluster(job, 3)
    plan = decide_job(job, running_observation(pods, services, 3))
    assert plan.delete_pods == [] and plan.create == []
    assert plan.status.cluster_generation == 3


def test_a_cluster_whose_creation_failed_is_completed_without_counting_a_restart() -> None:
    job = make_job()
    first = decide_job(job, JobObservation(now=NOW))
    # The head Service was made, then the API refused the head pod (a quota); the status was written.
    job.status = first.status
    seen = JobObservation(now=NOW + timedelta(seconds=5), services=[ServiceView("demo-g1-head", 1)])
    plan = decide_job(job, seen)
    # The policy and the token Secret are made again, in place of the first ones: the operator never reads them.
    assert [obj["metadata"]["name"] for obj in plan.create] == [
        "demo-g1", "demo-g1-ray-token", "demo-g1-head", "demo-g1-w0", "demo-g1-w1"
    ]  # fmt: skip
    assert plan.status.restarts == 0 and plan.status.cluster_generation == 1 and plan.status.phase == "Starting"


def test_a_generation_whose_names_an_earlier_job_of_the_same_name_still_holds_is_skipped() -> None:
    job = make_job()
    plan = decide_job(job, JobObservation(now=NOW, foreign_generations=frozenset({1, 2})))
    assert plan.status.cluster_generation == 3
    assert {obj["metadata"]["name"] for obj in plan.create} >= {"demo-g3-head", "demo-g3-w0"}


def stuck_pod(obj: dict[str, Any], job: BigModelJob, status: dict[str, Any]) -> PodView:
    obj["metadata"]["annotations"].update(spec_digests(job))
    obj["metadata"]["creationTimestamp"] = (NOW - timedelta(minutes=1)).isoformat()
    obj["status"] = {"phase": "Pending", **status}
    return PodView.from_object(obj)


UNSCHEDULABLE = {
    "conditions": [
        {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
        }
    ]
}
IMAGE_PULL = {
    "containerStatuses": [
        {
            "image": "bad:tag",
            "state": {"waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling "bad:tag"'}},
        }
    ]
}


def test_pods_that_cannot_start_are_pending_with_the_schedulers_words_and_one_event() -> None:
    job = make_job(running(phase="Starting", rayJobId=None, startingSince=NOW - timedelta(minutes=1)))
    worker = stuck_pod(worker_pod(job, 1, 1, None), job, UNSCHEDULABLE)
    plan = decide_job(job, observe(job, state=None, w1=worker))
    assert plan.status.phase == "Pending"
    assert "0/3 nodes are available: 3 Insufficient nvidia.com/gpu." in plan.status.message
    [podsready] = [c for c in plan.status.conditions if c.type == "PodsReady"]
    assert (podsready.status, podsready.reason) == ("False", "Unschedulable")
    assert reasons(plan).count("Unschedulable") == 1
    job.status = plan.status
    again = decide_job(job, observe(job, state=None, w1=worker))
    assert "Unschedulable" not in reasons(again), "one Event per problem, not one per pass"


def test_an_image_that_cannot_be_pulled_is_said_and_the_startup_deadline_fails_the_job() -> None:
    since = NOW - timedelta(seconds=601)
    job = make_job(running(phase="Starting", rayJobId=None, startingSince=since), startupDeadlineSeconds=600)
    head = stuck_pod(head_pod(job, 1, None), job, IMAGE_PULL)
    plan = decide_job(job, observe(job, state=None, head=head))
    assert plan.status.phase == "Failed"
    [failed] = [c for c in plan.status.conditions if c.type == "Failed"]
    assert failed.reason == "StartupDeadlineExceeded" and "ImagePullBackOff" in failed.message
    assert "StartupDeadlineExceeded" in reasons(plan)


def test_the_startup_deadline_stops_counting_once_the_run_started() -> None:
    job = make_job(running(phase="Starting", startingSince=NOW - timedelta(seconds=30)), startupDeadlineSeconds=60)
    plan = decide_job(job, observe(job))
    assert plan.status.phase == "Running" and plan.status.starting_since is None
    job.status = plan.status
    later = replace(observe(job), now=NOW + timedelta(hours=1))
    assert decide_job(job, later).status.phase == "Running"


def test_a_nan_loss_is_reported_as_such_and_the_job_keeps_being_reconciled() -> None:
    job = make_job(running())
    report = TrainingReport.model_validate_json(
        TrainingReport(
            step=7, total_steps=10, metrics={"loss": float("nan"), "samples_per_second": 5.0}
        ).model_dump_json()
    )
    plan = decide_job(job, observe(job, report=report))
    metrics = plan.status.metrics
    assert metrics.loss is None and metrics.non_finite == ["loss"] and metrics.samples_per_second == 5.0
    assert "loss not finite" in plan.status.message and "NonFiniteMetrics" in reasons(plan)
    job.status = plan.status
    assert "NonFiniteMetrics" not in reasons(decide_job(job, observe(job, report=report)))


def test_every_new_pod_carries_the_counts_a_later_pass_reads_back() -> None:
    job = make_job(running(restarts=1, workers={"replaced": 2}))
    plan = decide_job(job, observe(job, state="FAILED"))
    heads = [obj for obj in plan.create if obj["kind"] == "Pod"]
    assert heads and all(obj["metadata"]["annotations"]["bigmodel.dev/restarts"] == "2" for obj in heads)
    assert all(obj["metadata"]["annotations"]["bigmodel.dev/workers-replaced"] == "2" for obj in heads)


def test_a_new_defaulted_field_or_operator_default_does_not_change_the_run_digest() -> None:
    plain = make_job()
    explicit = make_job(startupDeadlineSeconds=1800, suspend=False, cleanPodPolicy="All")
    assert spec_digests(plain) == spec_digests(explicit)


def test_the_causal_lm_options_shape_the_model() -> None:
    options = {"model": "s3://models/tiny", "dataset": "s3://data/docs.jsonl"}

    def model_digest(**changes: object) -> str:
        builtin = {"task": "causal-lm", "causalLm": options | changes}
        return spec_digests(make_job(workload={"builtin": builtin}))["bigmodel.dev/model-spec"]

    assert len({model_digest(), model_digest(model="s3://models/other"), model_digest(contextLength=256)}) == 3


def test_pods_built_before_digests_left_defaults_out_are_not_rebuilt() -> None:
    job = make_job(running())
    pods, services = cluster(job, 1)
    legacy = spec_digests(job, defaults=True)
    pods = [replace(p, annotations={**p.annotations, **legacy}) for p in pods]
    plan = decide_job(job, running_observation(pods, services, 1))
    assert plan.create == [] and plan.status.phase == "Running"


def test_changing_the_operators_default_storage_does_not_move_or_rebuild_a_running_job() -> None:
    from bigmodel.controller.job_kind import JobKind
    from bigmodel.controller.settings import OperatorSettings

    body = make_job().model_dump(by_alias=True, mode="json", exclude_none=True)
    del body["spec"]["checkpoint"]["storage"]
    kind = JobKind()
    first, _ = kind.parse(body, OperatorSettings(default_storage="s3://old"))
    assert first is not None and first.spec.checkpoint.storage == "s3://old/team/demo"
    built = decide_job(first, JobObservation(now=NOW))
    assert built.status.checkpoint_storage == "s3://old/team/demo"
    pods = [PodView.from_object(obj) for obj in built.create if obj["kind"] == "Pod"]
    body["status"] = built.status.model_dump(by_alias=True, mode="json")
    later, _ = kind.parse(body, OperatorSettings(default_storage="s3://new"))
    assert later is not None and later.spec.checkpoint.storage == "s3://old/team/demo"
    assert spec_digests(later) == spec_digests(first), "the run digest did not move: no rebuild onto empty storage"
    plan = decide_job(later, running_observation(pods, [ServiceView("demo-g1-head", 1)], 1))
    assert plan.delete_pods == [] and plan.status.cluster_generation == 1


def test_a_checkpoint_that_would_not_load_is_in_the_status_with_one_event() -> None:
    job = make_job(running())
    broken = "s3://bucket/demo/checkpoints/step-0000000040"
    report = TrainingReport(step=31, total_steps=100, skipped_checkpoints={broken: "EOFError: Ran out of input"})
    plan = decide_job(job, observe(job, report=report))
    assert plan.status.skipped_checkpoints == [broken]
    (event,) = [event for event in plan.events if event.reason == "CheckpointSkipped"]
    assert event.type == "Warning" and broken in event.message and "EOFError" in event.message
    job.status = plan.status
    again = decide_job(job, observe(job, report=report))
    assert "CheckpointSkipped" not in reasons(again) and again.status.skipped_checkpoints == [broken]


def test_a_run_that_cannot_run_fails_the_job_without_spending_restarts() -> None:
    job = make_job(running())
    seen = observe(job)
    assert seen.ray_job is not None
    message = "Job entrypoint command failed: checkpoint storage /x cannot be written: Permission denied"
    seen = replace(seen, ray_job=replace(seen.ray_job, state="FAILED", message=message, cannot_run=True))
    plan = decide_job(job, seen)
    assert plan.status.phase == "Failed" and plan.status.restarts == 0 and plan.create == []
    assert reasons(plan) == ["CannotRun"] and "cannot be written" in plan.status.message


def _passes(job: BigModelJob, steps: list[int], every: timedelta) -> list[JobPlan]:
    """Passes over a Running job `every` apart, its run at the given steps; each pass sees the last one's status."""
    plans = []
    for index, step in enumerate(steps):
        seen = replace(observe(job, report=TrainingReport(step=step, total_steps=100)), now=NOW + index * every)
        plans.append(decide_job(job, seen))
        job.status = plans[-1].status
    return plans


def test_a_run_whose_step_stops_moving_is_restarted_as_stalled_from_its_checkpoint() -> None:
    checkpoint = CheckpointRef(path="s3://bucket/demo/checkpoints/step-0000000040", step=40, epoch=1, time=NOW)
    job = make_job(running(lastCheckpoint=checkpoint.model_dump()), failurePolicy={"stallTimeoutSeconds": 600})
    moving, *stuck, stalled = _passes(job, [41, 42, 42, 42, 42], timedelta(minutes=4))
    assert moving.status.progress.moved_time == NOW
    assert all(plan.status.phase == "Running" and plan.status.restarts == 0 for plan in stuck), "restarted early"
    assert [plan.status.progress.moved_time for plan in stuck] == [NOW + timedelta(minutes=4)] * 3
    status = stalled.status
    assert status.phase == "Restarting" and status.restarts == 1 and status.cluster_generation == 2
    assert reasons(stalled) == ["Stalled"]
    assert "no progress for 720 s at step 42 (stallTimeoutSeconds: 600)" in status.message
    assert "resuming from checkpoint step 40" in status.message
    restarting = next(c for c in status.conditions if c.type == "Restarting")
    assert (restarting.status, restarting.reason) == ("True", "Stalled")
    assert stalled.ray == [StopJob(RayHead("10.0.0.7", UID, 1), submission_id(UID, 1))], "the hung run is stopped"


def test_a_run_that_keeps_moving_or_has_no_stall_timeout_is_never_restarted_for_it() -> None:
    slow = make_job(running(), failurePolicy={"stallTimeoutSeconds": 600})
    assert {p.status.phase for p in _passes(slow, [41, 42, 43, 44, 45], timedelta(minutes=9))} == {"Running"}
    unset = make_job(running())
    assert {p.status.phase for p in _passes(unset, [41, 41, 41, 41], timedelta(hours=1))} == {"Running"}


def test_the_stall_clock_starts_again_when_a_restarted_run_is_running() -> None:
    job = make_job(running(phase="Restarting"), failurePolicy={"stallTimeoutSeconds": 600})
    job.status.progress.moved_time = NOW - timedelta(hours=2)  # type: ignore[union-attr]
    (plan,) = _passes(job, [42], timedelta(0))
    assert plan.status.phase == "Running" and plan.status.progress.moved_time == NOW
