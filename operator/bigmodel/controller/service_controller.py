"""One reconcile pass of a BigModelService: read the world, let reconcile decide, carry the plan out.

The I/O half of the operator for services; every decision is in bigmodel.reconcile.service.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

import kopf
from pydantic import ValidationError

from bigmodel.api.job import BigModelJob
from bigmodel.api.manifests import validation_errors
from bigmodel.api.service import BigModelService, BigModelServiceStatus
from bigmodel.builders.naming import owner_selector, serving_service_name
from bigmodel.builders.ray_cluster import checkpoint_claim
from bigmodel.controller.children import change_children
from bigmodel.controller.job_controller import Clients
from bigmodel.controller.kube import JOBS, MODEL_SERVICES, PODS, SERVICES, KubeClient
from bigmodel.controller.ray_client import RayClient, RayUnreachable
from bigmodel.controller.stored_status import stored_status
from bigmodel.reconcile.observed import PodView, ServiceView
from bigmodel.reconcile.service import ServicePlan, capacity_errors, decide_service, service_validation_plan
from bigmodel.reconcile.service_observed import (
    ModelSourceView,
    RayClusterView,
    ServiceObservation,
    ServingServiceView,
    SourceProblem,
)

log = logging.getLogger(__name__)
KIND = "BigModelService"


def parse_service(body: dict[str, Any]) -> tuple[BigModelService | None, list[str]]:
    """The service, or the spec's errors as `field: reason` lines."""
    manifest = {key: body.get(key) for key in ("apiVersion", "kind", "metadata", "spec")}
    errors = [str(error) for error in validation_errors(manifest)]
    if errors:
        return None, errors
    service = BigModelService.model_validate(manifest, by_alias=True, by_name=False)
    errors = capacity_errors(service.spec)
    if errors:
        return None, errors
    service.status = stored_status(BigModelServiceStatus, body.get("status"))
    return service, []


async def resolve_source(service: BigModelService, kube: KubeClient, settings_storage: str | None) -> Any:
    """Where the model is (ModelSourceView), or why there is none to serve yet (SourceProblem)."""
    source = service.spec.model
    if source.uri is not None:
        claim = (source.volume_claim_name, source.uri) if source.volume_claim_name else None
        return ModelSourceView(uri=source.uri, claim=claim)
    namespace = service.metadata.namespace or "default"
    body = await kube.get(JOBS, namespace, source.job_name or "")
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
    if job.spec.checkpoint.storage is None and settings_storage:
        job.spec.checkpoint.storage = f"{settings_storage.rstrip('/')}/{namespace}/{job.metadata.name}"
    claim = checkpoint_claim(job)
    revision = f"{job.metadata.uid}:{status.completion_time.isoformat() if status.completion_time else ''}"
    return ModelSourceView(
        uri=status.model_uri, revision=revision, claim=(claim.claim_name, claim.path) if claim else None
    )


async def _ray_view(ray: RayClient, pod: PodView | None, app_name: str) -> RayClusterView | None:
    if pod is None or not pod.ready or not pod.pod_ip:
        return None
    try:
        return await ray.serve_state(pod.pod_ip, app_name)
    except RayUnreachable as error:
        log.info("Ray head %s not reachable yet: %s", pod.name, error)
        return None


async def observe(service: BigModelService, clients: Clients) -> ServiceObservation:
    kube, ray = clients.kube, clients.ray
    meta = service.metadata
    namespace = meta.namespace or "default"
    selector = owner_selector(meta.name, KIND)
    source = await resolve_source(service, kube, clients.settings.default_storage)
    pods = [PodView.from_object(pod) for pod in await kube.list(PODS, namespace, selector)]
    services = await kube.list(SERVICES, namespace, selector)
    serving_name = serving_service_name(meta.name)
    serving = next((s for s in services if s["metadata"]["name"] == serving_name), None)
    heads = [ServiceView.from_object(s) for s in services if s["metadata"]["name"] != serving_name]
    seen = ServiceObservation(
        now=datetime.now(timezone.utc),
        source=source,
        pods=pods,
        head_services=heads,
        serving=ServingServiceView.from_object(serving) if serving else None,
    )
    for generation in seen.generations():
        view = await _ray_view(ray, seen.head(generation), meta.name)
        if view is not None:
            seen.clusters[generation] = view
    return seen


async def apply(plan: ServicePlan, body: dict[str, Any], kube: KubeClient, ray: RayClient) -> None:
    """Carry out the plan; the status is written last, so a failed step is retried from the same status."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    await change_children(
        kube, namespace, delete_pods=plan.delete_pods, delete_services=plan.delete_services, create=plan.create
    )
    for head_ip, config in plan.deploy:
        await ray.deploy_serve(head_ip, config)
    if plan.serving_selector is not None:
        # A merge patch of a map merges keys; every key of the selector is replaced, none is added or dropped.
        await kube.patch(SERVICES, namespace, serving_service_name(name), {"spec": {"selector": plan.serving_selector}})
    for event in plan.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
    new_status = plan.status.model_dump(by_alias=True, mode="json")
    if new_status != body.get("status"):
        await kube.patch_status(MODEL_SERVICES, namespace, name, new_status)


async def reconcile_service(
    namespace: str, name: str, clients: Clients, idle_since: dict[str, datetime]
) -> float | None:
    """One pass; updates `idle_since` (the worker idle timers) and returns when to look again."""
    kube, ray = clients.kube, clients.ray
    body = await kube.get(MODEL_SERVICES, namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    service, errors = parse_service(body)
    if service is None:
        status = stored_status(BigModelServiceStatus, body.get("status"))
        now = datetime.now(timezone.utc)
        await apply(service_validation_plan(status, body["metadata"].get("generation"), errors, now), body, kube, ray)
        return None
    seen = await observe(service, clients)
    plan = decide_service(service, seen, idle_since, poll_s=clients.settings.poll_running_s)
    await apply(plan, body, kube, ray)
    idle_since.clear()
    idle_since.update(plan.idle_since)
    clients.metrics.observe_service(service, plan)
    return plan.requeue_after


async def delete_service_children(body: dict[str, Any], kube: KubeClient) -> None:
    """On deletion: remove every pod and Service the service made, of every cluster."""
    meta = body["metadata"]
    namespace, selector = meta["namespace"], owner_selector(meta["name"], KIND)
    for pod in await kube.list(PODS, namespace, selector):
        await kube.delete(PODS, namespace, pod["metadata"]["name"])
    for service in await kube.list(SERVICES, namespace, selector):
        await kube.delete(SERVICES, namespace, service["metadata"]["name"])
