"""Prometheus metrics of the operator: what the chart's Grafana dashboard and alerts are built on.

Counts by phase and GPU totals are derived from the last pass over each job, so they stay right after
an operator restart (the first pass over every job rebuilds them) without any state of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from bigmodel.api.job import BigModelJob, BigModelJobStatus, JobPhase
from bigmodel.api.service import BigModelService, BigModelServiceStatus, ServicePhase
from bigmodel.api.wire import OwnerKind
from bigmodel.reconcile.plans import Outcome, Plan

PHASES: tuple[JobPhase, ...] = ("Pending", "Starting", "Running", "Restarting", "Succeeded", "Failed", "Suspended")
SERVICE_PHASES: tuple[ServicePhase, ...] = ("Pending", "Deploying", "Ready", "Upgrading", "Failed")
_WORKER_CHANGES = {Outcome.WORKER_ADDED: "added", Outcome.WORKER_REMOVED: "removed", Outcome.WORKER_REPLACED: "replaced"}
_UPGRADE_RESULTS = {Outcome.UPGRADE_COMPLETE: "complete", Outcome.UPGRADE_FAILED: "failed"}
ACTIVE_PHASES = ("Pending", "Starting", "Running", "Restarting")
_SLOW = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600)
_JOB_LENGTH = (60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 24 * 3600, 72 * 3600)


@dataclass(frozen=True)
class _Facts:
    phase: str
    gpus_requested: int
    gpus_in_use: int


@dataclass(frozen=True)
class _ServiceFacts(_Facts):
    replicas_desired: int
    replicas_running: int
    workers_ready: int


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.jobs = Gauge("bigmodel_jobs", "BigModelJobs by phase.", ["phase"], registry=r)
        self.restarts = Counter("bigmodel_job_restarts", "Ray cluster rebuilds after a failure.", registry=r)
        self.replacements = Counter("bigmodel_worker_replacements", "Worker pods replaced after a failure.", registry=r)
        self.time_to_running = Histogram(
            "bigmodel_job_time_to_running_seconds", "From creation to first Running.", buckets=_SLOW, registry=r
        )
        self.duration = Histogram(
            "bigmodel_job_duration_seconds", "From start to Succeeded or Failed.", ["phase"], buckets=_JOB_LENGTH, registry=r
        )
        self.reconcile_duration = Histogram(
            "bigmodel_reconcile_duration_seconds", "One reconcile pass of one job.", registry=r
        )
        self.reconcile_errors = Counter("bigmodel_reconcile_errors", "Reconcile passes that failed.", registry=r)
        self.gpus_requested = Gauge(
            "bigmodel_gpus_requested", "GPUs the active jobs and the services' worker pods ask for.", registry=r
        )
        self.gpus_in_use = Gauge(
            "bigmodel_gpus_in_use", "GPUs of the ready worker pods of active jobs and of services.", registry=r
        )
        self.services = Gauge("bigmodel_services", "BigModelServices by phase.", ["phase"], registry=r)
        self.service_replicas = Gauge(
            "bigmodel_service_replicas", "Serve replicas of all services.", ["state"], registry=r
        )
        self.service_workers = Gauge("bigmodel_service_workers_ready", "Ready worker pods of all services.", registry=r)
        self.service_worker_changes = Counter(
            "bigmodel_service_worker_changes", "Service worker pods added, removed or replaced.", ["change"], registry=r
        )
        self.service_upgrades = Counter(
            "bigmodel_service_upgrades", "Cluster upgrades of services, by result.", ["result"], registry=r
        )
        for change in _WORKER_CHANGES.values():
            self.service_worker_changes.labels(change)
        for result in _UPGRADE_RESULTS.values():
            self.service_upgrades.labels(result)
        self._facts: dict[tuple[str, str], _Facts] = {}
        self._service_facts: dict[tuple[str, str], _ServiceFacts] = {}
        self._publish()

    def observe_job(
        self, job: BigModelJob, plan: Plan[BigModelJobStatus], now: datetime, created: datetime | None
    ) -> None:
        """Counters from what this pass did; gauges from where every job now stands."""
        before = job.status.phase if job.status else "Pending"
        after = plan.status.phase
        self.restarts.inc(plan.outcomes[Outcome.RESTARTED])
        self.replacements.inc(plan.outcomes[Outcome.WORKER_REPLACED])
        ever_ran = job.status is not None and any(c.type == "Running" for c in job.status.conditions)
        if after == "Running" and not ever_ran and created is not None:
            self.time_to_running.observe((now - created).total_seconds())
        if after in ("Succeeded", "Failed") and before != after and plan.status.start_time is not None:
            self.duration.labels(after).observe((now - plan.status.start_time).total_seconds())
        per_worker = job.spec.workers.resources.gpu
        active = after in ACTIVE_PHASES
        requested = (job.spec.workers.replicas * per_worker + job.spec.head.resources.gpu) if active else 0
        in_use = plan.status.workers.ready * per_worker if active else 0
        self._facts[(job.metadata.namespace or "", job.metadata.name)] = _Facts(after, requested, in_use)
        self._publish()

    def observe_service(self, service: BigModelService, plan: Plan[BigModelServiceStatus]) -> None:
        for outcome, change in _WORKER_CHANGES.items():
            self.service_worker_changes.labels(change).inc(plan.outcomes[outcome])
        for outcome, result in _UPGRADE_RESULTS.items():
            self.service_upgrades.labels(result).inc(plan.outcomes[outcome])
        status, per_worker = plan.status, service.spec.workers.resources.gpu
        self._service_facts[(service.metadata.namespace or "", service.metadata.name)] = _ServiceFacts(
            phase=status.phase,
            gpus_requested=status.workers.desired * per_worker,
            gpus_in_use=status.workers.ready * per_worker,
            replicas_desired=status.replicas.desired,
            replicas_running=status.replicas.running,
            workers_ready=status.workers.ready,
        )
        self._publish()

    def forget(self, kind: OwnerKind, namespace: str, name: str) -> None:
        """A deleted resource counts no more."""
        facts: dict[tuple[str, str], Any] = self._facts if kind == "BigModelJob" else self._service_facts
        facts.pop((namespace, name), None)
        self._publish()

    def _publish(self) -> None:
        for phase in PHASES:
            self.jobs.labels(phase).set(sum(1 for facts in self._facts.values() if facts.phase == phase))
        services = self._service_facts.values()
        for service_phase in SERVICE_PHASES:
            self.services.labels(service_phase).set(sum(1 for facts in services if facts.phase == service_phase))
        self.service_replicas.labels("desired").set(sum(facts.replicas_desired for facts in services))
        self.service_replicas.labels("running").set(sum(facts.replicas_running for facts in services))
        self.service_workers.set(sum(facts.workers_ready for facts in services))
        everything = [*self._facts.values(), *services]
        self.gpus_requested.set(sum(facts.gpus_requested for facts in everything))
        self.gpus_in_use.set(sum(facts.gpus_in_use for facts in everything))
