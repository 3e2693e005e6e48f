"""The operator's per-resource metrics: what the chart's alerts read, for each job and service, until it is deleted."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from bigmodel.api.common import Condition
from bigmodel.api.job import BigModelJobStatus, Progress
from bigmodel.api.service import BigModelServiceStatus
from bigmodel.controller.metrics import PHASES, OperatorMetrics
from bigmodel.reconcile.plans import Plan
from tests.support.resources import job_model, service_model

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
JOB = {"namespace": "team", "name": "train"}
SERVICE = {"namespace": "team", "name": "serve"}


def job_status(phase: str, *, step: int = 0, **fields: Any) -> BigModelJobStatus:
    return BigModelJobStatus(phase=phase, progress=Progress(step=step), **fields)


def observe(metrics: OperatorMetrics, status: BigModelJobStatus, now: datetime = NOW, **spec: Any) -> None:
    metrics.observe_job(job_model(**spec), Plan(status=status), now, None)


def sample(metrics: OperatorMetrics, series: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(series, labels)


def test_a_starting_job_has_its_phase_restart_budget_and_startup_clock() -> None:
    metrics = OperatorMetrics()
    created = NOW - timedelta(minutes=7)
    observe(metrics, job_status("Starting", startingSince=created, restarts=1), failurePolicy={"maxRestarts": 5})
    phases = {phase: sample(metrics, "bigmodel_job_status_phase", **JOB, phase=phase) for phase in PHASES}
    assert phases == {phase: float(phase == "Starting") for phase in PHASES}
    assert sample(metrics, "bigmodel_job_status_restarts", **JOB) == 1
    assert sample(metrics, "bigmodel_job_spec_max_restarts", **JOB) == 5
    assert sample(metrics, "bigmodel_job_status_starting_timestamp_seconds", **JOB) == created.timestamp()
    assert sample(metrics, "bigmodel_job_spec_startup_deadline_seconds", **JOB) == 1800


def test_the_startup_clock_runs_only_until_the_run_starts_and_the_deadline_only_when_set() -> None:
    metrics = OperatorMetrics()
    observe(metrics, job_status("Running"))
    assert sample(metrics, "bigmodel_job_status_starting_timestamp_seconds", **JOB) is None
    observe(metrics, job_status("Restarting", startingSince=NOW), startupDeadlineSeconds=None)
    assert sample(metrics, "bigmodel_job_status_starting_timestamp_seconds", **JOB) == NOW.timestamp()
    assert sample(metrics, "bigmodel_job_spec_startup_deadline_seconds", **JOB) is None


def test_the_progress_clock_moves_with_the_step_and_with_the_phase() -> None:
    metrics = OperatorMetrics()
    later, latest = NOW + timedelta(minutes=10), NOW + timedelta(minutes=20)

    def progress_time() -> float | None:
        return sample(metrics, "bigmodel_job_status_progress_timestamp_seconds", **JOB)

    observe(metrics, job_status("Running", step=40))
    observe(metrics, job_status("Running", step=40), later)
    assert progress_time() == NOW.timestamp(), "no step since NOW"
    observe(metrics, job_status("Running", step=41), later)
    assert progress_time() == later.timestamp() and sample(metrics, "bigmodel_job_status_progress_step", **JOB) == 41
    observe(metrics, job_status("Restarting", step=41), latest)
    assert progress_time() == latest.timestamp(), "a job back from a restart has not stalled yet"


def test_a_service_is_ready_while_its_ready_condition_is_true() -> None:
    metrics = OperatorMetrics()
    metrics.observe_service(service_model(), Plan(status=BigModelServiceStatus(phase="Deploying")))
    assert sample(metrics, "bigmodel_service_status_ready", **SERVICE) == 0
    assert sample(metrics, "bigmodel_service_status_phase", **SERVICE, phase="Deploying") == 1
    serving = Condition(type="Ready", status="True", last_transition_time=NOW)
    metrics.observe_service(
        service_model(), Plan(status=BigModelServiceStatus(phase="Upgrading", conditions=[serving]))
    )
    assert sample(metrics, "bigmodel_service_status_ready", **SERVICE) == 1
    assert sample(metrics, "bigmodel_service_status_phase", **SERVICE, phase="Deploying") == 0


def test_reconcile_errors_are_counted_per_resource_and_in_all() -> None:
    metrics = OperatorMetrics()
    metrics.reconcile_failed("BigModelJob", "team", "train")
    metrics.reconcile_failed("BigModelJob", "team", "train")
    metrics.reconcile_failed("BigModelService", "team", "serve")
    assert sample(metrics, "bigmodel_resource_reconcile_errors_total", kind="BigModelJob", **JOB) == 2
    assert sample(metrics, "bigmodel_resource_reconcile_errors_total", kind="BigModelService", **SERVICE) == 1
    assert sample(metrics, "bigmodel_reconcile_errors_total") == 3


def test_forget_removes_every_series_of_the_deleted_resource_only() -> None:
    metrics = OperatorMetrics()
    observe(metrics, job_status("Starting"))
    metrics.observe_service(service_model(), Plan(status=BigModelServiceStatus()))
    metrics.reconcile_failed("BigModelJob", "team", "train")
    metrics.reconcile_failed("BigModelService", "team", "serve")
    metrics.forget("BigModelJob", "team", "train")
    remaining = {
        (series.name, series.labels["name"])
        for family in metrics.registry.collect()
        for series in family.samples
        if "namespace" in series.labels
    }
    assert {name for _, name in remaining} == {"serve"}
    assert ("bigmodel_resource_reconcile_errors_total", "serve") in remaining
    assert sample(metrics, "bigmodel_jobs", phase="Starting") == 0
