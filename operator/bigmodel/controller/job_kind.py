"""BigModelJob for the controller loop: checkpoint storage defaults, the Ray job and progress it observes."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime

from bigmodel.api.job import BigModelJob, BigModelJobStatus
from bigmodel.api.wire import VOLCANO_SCHEDULER
from bigmodel.builders.naming import submission_id
from bigmodel.controller.clients import Clients
from bigmodel.controller.kind import Kind
from bigmodel.controller.ray_client import RayError
from bigmodel.controller.settings import OperatorSettings
from bigmodel.reconcile.decision import validation_plan
from bigmodel.reconcile.job import JobPlan, decide_job, runs_to_stop
from bigmodel.reconcile.job_ledger import current_generation
from bigmodel.reconcile.job_observed import JobObservation
from bigmodel.reconcile.observed import Children, ClusterObservation, ServiceView
from bigmodel.reconcile.plans import RayAction

log = logging.getLogger(__name__)

STORAGE_REQUIRED = (
    "spec.checkpoint.storage: required in a cluster: a path on a shared volume (with volumeClaimName) or an "
    "object-store URI, unless the operator has a default storage"
)
VOLCANO_DISABLED = (
    "spec.schedulerName: volcano is not enabled in this operator (Helm value gangScheduling.volcano), which may not "
    "make the job's PodGroup"
)


class JobKind(Kind[BigModelJob, JobObservation, BigModelJobStatus]):
    name = "BigModelJob"
    model = BigModelJob
    status_model = BigModelJobStatus

    def check(self, job: BigModelJob, settings: OperatorSettings) -> list[str]:
        checkpoint = job.spec.checkpoint
        pinned = job.status.checkpoint_storage if job.status else None
        checkpoint.storage = settings.storage_for(
            job.metadata.namespace or "", job.metadata.name, checkpoint.storage or pinned
        )
        errors = [STORAGE_REQUIRED] if checkpoint.storage is None else []
        if job.spec.scheduler_name == VOLCANO_SCHEDULER and not settings.volcano:
            errors.append(VOLCANO_DISABLED)
        return errors

    async def observe(self, job: BigModelJob, clients: Clients, now: datetime, children: Children) -> JobObservation:
        seen = JobObservation(
            now=now,
            pods=children.pods,
            services=[ServiceView.from_object(s) for s in children.services],
            foreign_generations=children.foreign_generations,
        )
        generation = current_generation(job.status, seen)
        head = seen.head(generation)
        if head is None or not head.ready or not head.pod_ip:
            return seen
        try:
            ray_job = await clients.ray.job(head.ray_head, submission_id(job.metadata.uid or "", generation))
        except RayError as error:
            log.info("Ray head of %s/%s not reachable yet: %s", job.metadata.namespace, job.metadata.name, error)
            return seen
        return replace(seen, ray_reachable=True, ray_job=ray_job, report=await clients.ray.report(head.ray_head))

    def decide(
        self, job: BigModelJob, seen: JobObservation, timers: dict[str, datetime], settings: OperatorSettings
    ) -> JobPlan:
        return decide_job(job, seen, poll_s=settings.poll_running_s, operator=settings.operator_peer())

    def invalid(
        self, status: BigModelJobStatus | None, generation: int | None, errors: list[str], now: datetime
    ) -> JobPlan:
        return validation_plan(status or BigModelJobStatus(), generation, errors, now)

    def stops_before_deletion(self, status: BigModelJobStatus | None, seen: ClusterObservation) -> list[RayAction]:
        return list(runs_to_stop(status, seen))

    def record(
        self, clients: Clients, job: BigModelJob, plan: JobPlan, now: datetime, created: datetime | None
    ) -> None:
        clients.metrics.observe_job(job, plan, now, created)
