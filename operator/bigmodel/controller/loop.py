"""One reconcile pass of any kind: read the world, let reconcile decide, carry the plan out.

The I/O half of the operator; every decision is in bigmodel.reconcile. The plan is carried out in a fixed order:
deletions first (a rebuilt cluster never runs next to the pods it replaces), creations (tolerating repeats), Ray
calls, Service patches, Events, and the status last, so a failed step is retried from the same status.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

import kopf

from bigmodel.builders.naming import owner_selector
from bigmodel.controller.clients import Clients
from bigmodel.controller.kind import Kind
from bigmodel.controller.kube import PODS, SERVICES
from bigmodel.controller.ray_client import RayClient, RayUnreachable
from bigmodel.reconcile.decision import deletion_plan
from bigmodel.reconcile.observed import ClusterObservation, PodView, ServiceView
from bigmodel.reconcile.plans import DeployServe, Plan, RayAction, StopJob, SubmitJob

log = logging.getLogger(__name__)


async def reconcile(
    kind: Kind[Any, Any, Any], namespace: str, name: str, clients: Clients, timers: dict[str, datetime]
) -> float | None:
    """One pass over one resource; updates `timers` and returns when to look again (None: only on a change)."""
    body = await clients.kube.get(kind.resource, namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    now = datetime.now(timezone.utc)
    owner, errors = kind.parse(body, clients.settings)
    if owner is None:
        plan = kind.invalid(kind.stored_status(body), body["metadata"].get("generation"), errors, now)
        await apply(kind, plan, body, clients)
        return None
    pods, services = await _children(kind, namespace, name, clients)
    seen = await kind.observe(owner, clients, now, pods, services)
    plan = kind.decide(owner, seen, timers, clients.settings)
    await apply(kind, plan, body, clients)
    timers.clear()
    timers.update(plan.timers)
    created = body["metadata"].get("creationTimestamp")
    kind.record(clients, owner, plan, now, datetime.fromisoformat(created) if created else None)
    return plan.requeue_after


async def delete_children(kind: Kind[Any, Any, Any], body: dict[str, Any], clients: Clients) -> None:
    """On deletion: the kind's last Ray calls, then every pod and Service the resource made, of every generation."""
    meta = body["metadata"]
    pods, services = await _children(kind, meta["namespace"], meta["name"], clients)
    status = kind.stored_status(body)
    seen = ClusterObservation(
        now=datetime.now(timezone.utc), pods=pods, services=[ServiceView.from_object(s) for s in services]
    )
    plan = deletion_plan(status or kind.status_model(), seen, kind.stops_before_deletion(status, seen))
    await _carry_out(plan, meta["namespace"], clients)


async def _children(
    kind: Kind[Any, Any, Any], namespace: str, name: str, clients: Clients
) -> tuple[list[PodView], list[dict[str, Any]]]:
    selector = owner_selector(name, kind.name)
    pods = [PodView.from_object(pod) for pod in await clients.kube.list(PODS, namespace, selector)]
    return pods, await clients.kube.list(SERVICES, namespace, selector)


async def apply(kind: Kind[Any, Any, Any], plan: Plan[Any], body: dict[str, Any], clients: Clients) -> None:
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    await _carry_out(plan, namespace, clients)
    for event in plan.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
    if plan.delete_owner:
        await clients.kube.delete(kind.resource, namespace, name)
        return
    new_status = plan.status.model_dump(by_alias=True, mode="json")
    if new_status != body.get("status"):
        await clients.kube.patch_status(kind.resource, namespace, name, new_status)


async def _carry_out(plan: Plan[Any], namespace: str, clients: Clients) -> None:
    """Everything but Events and the status, in the order the module docstring gives."""
    kube = clients.kube
    for pod in plan.delete_pods:
        await kube.delete(PODS, namespace, pod)
    for service in plan.delete_services:
        await kube.delete(SERVICES, namespace, service)
    for obj in plan.create:
        await kube.create(SERVICES if obj["kind"] == "Service" else PODS, namespace, obj)
    for action in plan.ray:
        await call_ray(clients.ray, action)
    for service, patch in plan.patch_services.items():
        await kube.patch(SERVICES, namespace, service, patch)


async def call_ray(ray: RayClient, action: RayAction) -> None:
    if isinstance(action, SubmitJob):
        await ray.submit(action.head_ip, action.submission)
    elif isinstance(action, StopJob):
        try:
            await ray.stop(action.head_ip, action.submission_id)
        except RayUnreachable:
            log.info("could not stop Ray job %s: the head is gone, and the job with it", action.submission_id)
    else:
        assert isinstance(action, DeployServe)
        await ray.deploy_serve(action.head_ip, action.config)
