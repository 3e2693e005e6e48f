"""Prometheus metrics of the operator: what the chart's Grafana dashboard and alerts are built on.

Counts by phase and GPU totals are derived from the last pass over each job, so they stay right after
an operator restart (the first pass over every job rebuilds them) without any state of their own.

The alerts need to name the resource, so the same facts are also exported per resource, labelled namespace and name
the way kube-state-metrics labels objects (its scrape needs honorLabels, or Prometheus renames namespace). They are
built at every scrape from the facts of the last pass, so a deleted resource's series go with its facts in `forget`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from bigmodel.api.job import BigModelJob, BigModelJobStatus, JobPhase
from bigmodel.api.service import BigModelService, BigModelServiceStatus, ServicePhase
from bigmodel.api.wire import OwnerKind
from bigmodel.reconcile.plans import Outcome, Plan

PHASES: tuple[JobPhase, ...] = ("Pending", "Starting", "Running", "Restarting", "Succeeded", "Failed", "Suspended")
SERVICE_PHASES: tuple[ServicePhase, ...] = ("Pending", "Deploying", "Ready", "Upgrading", "Failed")
_WORKER_CHANGES = {Outcome.WORKER_ADDED: "added", Outcome.WORKER_REMOVED: "removed", Outcome.WORKER_REPLACED: "replaced"}
_UPGRADE_RESULTS = {Outcome.UPGRADE_COMPLETE: "complete", Outcome.UPGRADE_FAILED: "failed"}
_CANARY_RESULTS = {Outcome.CANARY_PROMOTED: "promoted", Outcome.CANARY_ROLLED_BACK: "rolled_back"}
ACTIVE_PHASES = ("Pending", "Starting", "Running", "Restarting")
_SLOW = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600)
_JOB_LENGTH = (60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 24 * 3600, 72 * 3600)
_RESOURCE_LABELS = ["namespace", "name"]


@dataclass(frozen=True)
class _Facts:
    phase: str
    gpus_requested: int
    gpus_in_use: int


@dataclass(frozen=True)
class _JobFacts(_Facts):
    restarts: int
    max_restarts: int
    step: int
    progress_since: datetime
    starting_since: datetime | None
    startup_deadline_s: int | None


@dataclass(frozen=True)
class _ServiceFacts(_Facts):
    replicas_desired: int
    replicas_running: int
    workers_ready: int
    ready: bool


_FactsT = TypeVar("_FactsT", bound=_Facts)
_Key = tuple[str, str]

_JOB_SERIES: tuple[tuple[str, str, Callable[[_JobFacts], float | None]], ...] = (
    ("bigmodel_job_status_restarts", "Cluster rebuilds after a failure (status.restarts).", lambda f: f.restarts),
    ("bigmodel_job_spec_max_restarts", "Restart budget (spec.failurePolicy.maxRestarts).", lambda f: f.max_restarts),
    ("bigmodel_job_status_progress_step", "Optimizer steps done (status.progress.step).", lambda f: f.step),
    (
        "bigmodel_job_status_progress_timestamp_seconds",
        "Unix time the step last moved, or the phase changed; far behind while Running means stalled.",
        lambda f: f.progress_since.timestamp(),
    ),
    (
        "bigmodel_job_status_starting_timestamp_seconds",
        "Unix time the job's Ray cluster was created, until its run starts (status.startingSince).",
        lambda f: f.starting_since.timestamp() if f.starting_since else None,
    ),
    (
        "bigmodel_job_spec_startup_deadline_seconds",
        "spec.startupDeadlineSeconds; absent when the job waits for ever.",
        lambda f: f.startup_deadline_s,
    ),
)


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
        self.service_head_restarts = Counter(
            "bigmodel_service_head_restarts",
            "Lost Ray heads of services re-created in place (GCS fault tolerance), their clusters kept.",
            registry=r,
        )
        self.service_canaries = Counter(
            "bigmodel_service_canaries", "Canary model versions judged, by result.", ["result"], registry=r
        )
        for change in _WORKER_CHANGES.values():
            self.service_worker_changes.labels(change)
        for result in _CANARY_RESULTS.values():
            self.service_canaries.labels(result)
        for result in _UPGRADE_RESULTS.values():
            self.service_upgrades.labels(result)
        self._facts: dict[_Key, _JobFacts] = {}
        self._service_facts: dict[_Key, _ServiceFacts] = {}
        self._errors: dict[tuple[str, str, str], int] = {}
        # Scrapes run in the metrics server's thread; the passes that change the facts in the operator's.
        self._lock = threading.Lock()
        self._publish()
        r.register(self)

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
        key = (job.metadata.namespace or "", job.metadata.name)
        facts = _JobFacts(
            phase=after,
            gpus_requested=requested,
            gpus_in_use=in_use,
            restarts=plan.status.restarts,
            max_restarts=job.spec.failure_policy.max_restarts,
            step=plan.status.progress.step,
            progress_since=_progress_since(self._facts.get(key), after, plan.status.progress.step, now),
            starting_since=plan.status.starting_since,
            startup_deadline_s=job.spec.startup_deadline_seconds,
        )
        with self._lock:
            self._facts[key] = facts
        self._publish()

    def observe_service(self, service: BigModelService, plan: Plan[BigModelServiceStatus]) -> None:
        for outcome, change in _WORKER_CHANGES.items():
            self.service_worker_changes.labels(change).inc(plan.outcomes[outcome])
        for outcome, result in _UPGRADE_RESULTS.items():
            self.service_upgrades.labels(result).inc(plan.outcomes[outcome])
        for outcome, result in _CANARY_RESULTS.items():
            self.service_canaries.labels(result).inc(plan.outcomes[outcome])
        self.service_head_restarts.inc(plan.outcomes[Outcome.HEAD_RESTARTED])
        status, per_worker = plan.status, service.spec.workers.resources.gpu
        facts = _ServiceFacts(
            phase=status.phase,
            gpus_requested=status.workers.desired * per_worker,
            gpus_in_use=status.workers.ready * per_worker,
            replicas_desired=status.replicas.desired,
            replicas_running=status.replicas.running,
            workers_ready=status.workers.ready,
            ready=any(c.type == "Ready" and c.status == "True" for c in status.conditions),
        )
        with self._lock:
            self._service_facts[(service.metadata.namespace or "", service.metadata.name)] = facts
        self._publish()

    def reconcile_failed(self, kind: OwnerKind, namespace: str, name: str) -> None:
        """A pass over this resource raised: counted in all and for the resource, so that an alert can name it."""
        self.reconcile_errors.inc()
        with self._lock:
            self._errors[(kind, namespace, name)] = self._errors.get((kind, namespace, name), 0) + 1

    def forget(self, kind: OwnerKind, namespace: str, name: str) -> None:
        """A deleted resource counts no more, and its own series go."""
        facts: dict[_Key, Any] = self._facts if kind == "BigModelJob" else self._service_facts
        with self._lock:
            facts.pop((namespace, name), None)
            self._errors.pop((kind, namespace, name), None)
        self._publish()

    def collect(self) -> Iterator[Metric]:
        """The per-resource series as the facts stand now: the registry calls this at every scrape."""
        with self._lock:
            jobs, services, errors = dict(self._facts), dict(self._service_facts), dict(self._errors)
        yield _one_hot("bigmodel_job_status_phase", "1 for the job's phase, 0 for the others.", jobs, PHASES)
        for name, documentation, value in _JOB_SERIES:
            yield _per_resource(name, documentation, jobs, value)
        yield _one_hot(
            "bigmodel_service_status_phase", "1 for the service's phase, 0 for the others.", services, SERVICE_PHASES
        )
        yield _per_resource(
            "bigmodel_service_status_ready", "1 while the Ready condition is True.", services, lambda f: float(f.ready)
        )
        failed = CounterMetricFamily(
            "bigmodel_resource_reconcile_errors",
            "Reconcile passes that failed, by resource.",
            labels=["kind", *_RESOURCE_LABELS],
        )
        for labels, count in errors.items():
            failed.add_metric(list(labels), count)
        yield failed

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


def _progress_since(previous: _JobFacts | None, phase: str, step: int, now: datetime) -> datetime:
    """When progress last moved: the step changed, or the phase did (a job back in Running has not stalled yet).

    Kept in memory only: after an operator restart the stall clock starts again, which delays an alert and never
    raises a false one.
    """
    if previous is not None and previous.step == step and previous.phase == phase:
        return previous.progress_since
    return now


def _per_resource(
    name: str, documentation: str, facts: Mapping[_Key, _FactsT], value: Callable[[_FactsT], float | None]
) -> GaugeMetricFamily:
    """One series per resource; a resource whose value is None has none."""
    family = GaugeMetricFamily(name, documentation, labels=_RESOURCE_LABELS)
    for (namespace, resource), fact in facts.items():
        number = value(fact)
        if number is not None:
            family.add_metric([namespace, resource], number)
    return family


def _one_hot(name: str, documentation: str, facts: Mapping[_Key, _Facts], phases: tuple[str, ...]) -> GaugeMetricFamily:
    """kube-state-metrics' phase style: a series for every phase of every resource, 1 for the one it is in."""
    family = GaugeMetricFamily(name, documentation, labels=[*_RESOURCE_LABELS, "phase"])
    for (namespace, resource), fact in facts.items():
        for phase in phases:
            family.add_metric([namespace, resource, phase], float(fact.phase == phase))
    return family
