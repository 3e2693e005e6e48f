"""BigModelService for the controller loop: replica fit, where its model is, and what each cluster's Ray says."""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime

from pydantic import ValidationError

from bigmodel.api.job import BigModelJob
from bigmodel.api.service import BigModelService, BigModelServiceStatus
from bigmodel.api.traffic import TrafficReport
from bigmodel.builders.naming import serving_service_name
from bigmodel.builders.ray_cluster import checkpoint_claim
from bigmodel.controller.clients import Clients
from bigmodel.controller.kind import Kind
from bigmodel.controller.kube import OWNERS
from bigmodel.controller.ray_client import RayError
from bigmodel.controller.settings import OperatorSettings
from bigmodel.reconcile.observed import Children, PodView, ServiceView
from bigmodel.reconcile.service import decide_service, service_validation_plan
from bigmodel.reconcile.service_observed import (
    ModelSourceView,
    RayClusterView,
    ServiceObservation,
    ServingServiceView,
    SourceProblem,
)
from bigmodel.reconcile.service_pass import ServicePlan
from bigmodel.reconcile.service_scaling import capacity_errors

log = logging.getLogger(__name__)


class ServiceKind(Kind[BigModelService, ServiceObservation, BigModelServiceStatus]):
    name = "BigModelService"
    model = BigModelService
    status_model = BigModelServiceStatus

    def check(self, service: BigModelService, settings: OperatorSettings) -> list[str]:
        return capacity_errors(service.spec)

    async def observe(
        self, service: BigModelService, clients: Clients, now: datetime, children: Children
    ) -> ServiceObservation:
        serving_name = serving_service_name(service.metadata.name)
        services = children.services
        serving = next((s for s in services if s["metadata"]["name"] == serving_name), None)
        seen = ServiceObservation(
            now=now,
            source=await resolve_source(service, clients),
            pods=children.pods,
            services=[ServiceView.from_object(s) for s in services if s["metadata"]["name"] != serving_name],
            foreign_generations=children.foreign_generations,
            serving=ServingServiceView.from_object(serving) if serving else None,
        )
        for generation in seen.generations():
            view = await _ray_view(clients, seen.head(generation), service.metadata.name)
            if view is not None:
                seen.ray[generation] = view
        status = service.status
        if status is not None and status.canary is not None and status.serving is not None:
            traffic = await _traffic(clients, seen.head(status.serving.generation))
            return dataclasses.replace(seen, traffic=traffic)
        return seen

    def decide(
        self,
        service: BigModelService,
        seen: ServiceObservation,
        timers: dict[str, datetime],
        settings: OperatorSettings,
    ) -> ServicePlan:
        return decide_service(
            service,
            seen,
            timers,
            poll_s=settings.poll_running_s,
            operator=settings.operator_peer(),
            gcs=settings.gcs_fault_tolerance(),
        )

    def invalid(
        self, status: BigModelServiceStatus | None, generation: int | None, errors: list[str], now: datetime
    ) -> ServicePlan:
        return service_validation_plan(status, generation, errors, now)

    def record(
        self, clients: Clients, service: BigModelService, plan: ServicePlan, now: datetime, created: datetime | None
    ) -> None:
        clients.metrics.observe_service(service, plan)


async def resolve_source(service: BigModelService, clients: Clients) -> ModelSourceView | SourceProblem:
    """Where the model is, or why there is none to serve yet."""
    source = service.spec.model
    if source.uri is not None:
        claim = (source.volume_claim_name, source.uri) if source.volume_claim_name else None
        return ModelSourceView(uri=source.uri, claim=claim)
    namespace = service.metadata.namespace or "default"
    body = await clients.kube.get(OWNERS["BigModelJob"], namespace, source.job_name or "")
    if body is None:
        return SourceProblem(
            "SourceJobNotFound", f"spec.model.jobName: BigModelJob {source.job_name!r} not found in {namespace}"
        )
    try:
        job = BigModelJob.model_validate(
            {key: body.get(key) for key in ("apiVersion", "kind", "metadata", "spec", "status")}, by_alias=True
        )
    except ValidationError:
        return SourceProblem(
            "SourceJobInvalid", f"spec.model.jobName: BigModelJob {source.job_name!r} has an invalid spec"
        )
    status = job.status
    phase = status.phase if status else "Pending"
    if phase == "Failed":
        return SourceProblem("SourceJobFailed", f"BigModelJob {source.job_name!r} failed; it has no model", final=True)
    if phase != "Succeeded" or status is None:
        return SourceProblem("SourceJobNotFinished", f"waiting for BigModelJob {source.job_name!r} ({phase})")
    if not status.model_uri:
        return SourceProblem(
            "SourceJobHasNoModel",
            f"BigModelJob {source.job_name!r} exported no model (only built-in workloads and runs that call "
            "export_model do)",
            final=True,
        )
    checkpoint = job.spec.checkpoint
    checkpoint.storage = clients.settings.storage_for(
        namespace, job.metadata.name, checkpoint.storage or status.checkpoint_storage
    )
    claim = checkpoint_claim(job)
    revision = f"{job.metadata.uid}:{status.completion_time.isoformat() if status.completion_time else ''}"
    return ModelSourceView(
        uri=status.model_uri, revision=revision, claim=(claim.claim_name, claim.path) if claim else None
    )


async def _traffic(clients: Clients, pod: PodView | None) -> TrafficReport | None:
    """The canary split and outcomes, from the guard of the head's Serve proxy; None while it does not answer."""
    if pod is None or not pod.running:
        return None
    try:
        return await clients.ray.traffic(pod.ray_head)
    except RayError as error:
        log.info("no canary traffic report from %s: %s", pod.name, error)
        return None


async def _ray_view(clients: Clients, pod: PodView | None, app_name: str) -> RayClusterView | None:
    """What the head's Ray says; None while it does not answer. Asked of a running head, ready or not: a service's
    head is ready only once its Serve proxy is, which needs the application the operator deploys through this."""
    if pod is None or not pod.running:
        return None
    try:
        return await clients.ray.serve_state(pod.ray_head, app_name)
    except RayError as error:
        log.info("Ray head %s not reachable yet: %s", pod.name, error)
        return None
