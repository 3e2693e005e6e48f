"""One reconcile pass of a BigModelJob: read the world, let reconcile decide, carry the plan out.

The I/O half of the operator for jobs; every decision is in bigmodel.reconcile.job.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import kopf

from bigmodel.api.job import BigModelJob, BigModelJobStatus
from bigmodel.api.manifests import validation_errors
from bigmodel.builders.naming import owner_selector, submission_id
from bigmodel.controller.children import change_children
from bigmodel.controller.kube import JOBS, PODS, SERVICES, KubeClient
from bigmodel.controller.metrics import OperatorMetrics
from bigmodel.controller.ray_client import RayClient, RayUnreachable
from bigmodel.controller.settings import OperatorSettings
from bigmodel.controller.stored_status import stored_status
from bigmodel.reconcile.job import JobPlan, decide_job, validation_plan
from bigmodel.reconcile.observed import JobObservation, PodView, ServiceView

log = logging.getLogger(__name__)

STORAGE_REQUIRED = (
    "spec.checkpoint.storage: required in a cluster: a path on a shared volume (with volumeClaimName) or an "
    "object-store URI, unless the operator has a default storage"
)


def parse_job(body: dict[str, Any], settings: OperatorSettings) -> tuple[BigModelJob | None, list[str]]:
    """The job with operator defaults filled in, or the spec's errors as `field: reason` lines."""
    manifest = {key: body.get(key) for key in ("apiVersion", "kind", "metadata", "spec")}
    errors = [str(error) for error in validation_errors(manifest)]
    if errors:
        return None, errors
    job = BigModelJob.model_validate(manifest, by_alias=True, by_name=False)
    job.status = stored_status(BigModelJobStatus, body.get("status"))
    checkpoint = job.spec.checkpoint
    if checkpoint.storage is None:
        if settings.default_storage is None:
            return None, [STORAGE_REQUIRED]
        checkpoint.storage = f"{settings.default_storage.rstrip('/')}/{job.metadata.namespace}/{job.metadata.name}"
    return job, []


async def observe(job: BigModelJob, kube: KubeClient, ray: RayClient) -> JobObservation:
    meta = job.metadata
    namespace = meta.namespace or "default"
    selector = owner_selector(meta.name)
    pods = [PodView.from_object(pod) for pod in await kube.list(PODS, namespace, selector)]
    services = [ServiceView.from_object(svc) for svc in await kube.list(SERVICES, namespace, selector)]
    seen = JobObservation(now=datetime.now(timezone.utc), pods=pods, services=services)
    generation = job.status.cluster_generation if job.status else 0
    head = seen.head(generation)
    if head is None or not head.ready or not head.pod_ip:
        return seen
    try:
        ray_job = await ray.job(head.pod_ip, submission_id(meta.uid or "", generation))
    except RayUnreachable as error:
        log.info("Ray head of %s/%s not reachable yet: %s", namespace, meta.name, error)
        return seen
    report = await ray.report(head.pod_ip)
    return JobObservation(seen.now, pods, services, ray_reachable=True, ray_job=ray_job, report=report)


async def apply(plan: JobPlan, body: dict[str, Any], kube: KubeClient, ray: RayClient) -> None:
    """Carry out the plan; the status is written last, so a failed step is retried from the same status."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    await change_children(
        kube, namespace, delete_pods=plan.delete_pods, delete_services=plan.delete_services, create=plan.create
    )
    if plan.stop_ray_job and plan.ray_head_ip:
        try:
            await ray.stop(plan.ray_head_ip, plan.stop_ray_job)
        except RayUnreachable:
            log.info("could not stop Ray job %s: the head is gone, and the job with it", plan.stop_ray_job)
    if plan.submit and plan.ray_head_ip:
        await ray.submit(plan.ray_head_ip, plan.submit)
    for event in plan.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
    if plan.delete_job:
        await kube.delete(JOBS, namespace, name)
        return
    new_status = plan.status.model_dump(by_alias=True, mode="json")
    if new_status != body.get("status"):
        await kube.patch_status(JOBS, namespace, name, new_status)


@dataclass(frozen=True)
class Clients:
    """What every pass needs, made once at operator start-up."""

    kube: KubeClient
    ray: RayClient
    settings: OperatorSettings
    metrics: OperatorMetrics


async def reconcile_job(namespace: str, name: str, clients: Clients) -> float | None:
    """One pass; returns when to look again (None: only when something changes)."""
    kube, ray, settings = clients.kube, clients.ray, clients.settings
    body = await kube.get(JOBS, namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    job, errors = parse_job(body, settings)
    if job is None:
        generation = body["metadata"].get("generation")
        status = stored_status(BigModelJobStatus, body.get("status"))
        await apply(validation_plan(status, generation, errors, datetime.now(timezone.utc)), body, kube, ray)
        return None
    seen = await observe(job, kube, ray)
    plan = decide_job(job, seen, poll_s=settings.poll_running_s)
    await apply(plan, body, kube, ray)
    created = body["metadata"].get("creationTimestamp")
    clients.metrics.observe_pass(job, plan, seen, datetime.fromisoformat(created) if created else None)
    return plan.requeue_after


async def delete_children(body: dict[str, Any], kube: KubeClient, ray: RayClient) -> None:
    """On deletion: stop the run and remove every pod and service the job made, of every generation."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    selector = owner_selector(name)
    pods = [PodView.from_object(pod) for pod in await kube.list(PODS, namespace, selector)]
    status = stored_status(BigModelJobStatus, body.get("status"))
    if status is not None and status.ray_job_id:
        for head in (p for p in pods if p.role == "head" and p.pod_ip):
            try:
                await ray.stop(head.pod_ip or "", status.ray_job_id)
            except RayUnreachable:
                pass
    for pod in pods:
        await kube.delete(PODS, namespace, pod.name)
    for service in await kube.list(SERVICES, namespace, selector):
        await kube.delete(SERVICES, namespace, service["metadata"]["name"])
