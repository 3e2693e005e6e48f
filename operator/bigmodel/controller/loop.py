"""One reconcile pass of any kind: read the world, let reconcile decide, carry the plan out.

The I/O half of the operator; every decision is in bigmodel.reconcile. The plan is carried out in a fixed order:
deletions first (a rebuilt cluster never runs next to the pods it replaces), creations, Ray calls, Service patches,
Events, and the status last. The first step that fails stops the rest, and the status is still written, with what
the plan knew and a ReconcileFailed condition naming the step (reconcile/step_failure.py); the pass then raises
`PassFailed`, and the loop retries it with backoff. A repeated pass makes nothing twice, so a retry is safe.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import aiohttp
import kopf

from bigmodel.builders.naming import owner_selector
from bigmodel.controller.clients import Clients
from bigmodel.controller.kind import Kind
from bigmodel.controller.kube import NETWORK_POLICIES, PODS, RESOURCES_BY_KIND, SECRETS, SERVICES, KubeError
from bigmodel.controller.ray_client import RayClient, RayError, RayUnreachable
from bigmodel.controller.stored_status import status_patch
from bigmodel.reconcile.decision import deletion_plan
from bigmodel.reconcile.observed import Children, ClusterObservation, PodView, ServiceView, owned_by
from bigmodel.reconcile.plans import DeployServe, Plan, RayAction, SetTraffic, StopJob, SubmitJob
from bigmodel.reconcile.step_failure import StepFailure, one_line, with_failure, without_failure

log = logging.getLogger(__name__)

# What a step may fail with and still leave the operator sound: the API or Ray said no, or did not answer.
EXPECTED_FAILURES = (KubeError, RayError, aiohttp.ClientError, asyncio.TimeoutError)
_API_REASONS = {403: "Forbidden", 404: "NotFound", 409: "Conflict", 422: "Invalid", 429: "TooManyRequests"}


class PassFailed(Exception):
    """A pass stopped at a failed step; the status already says so."""

    def __init__(self, failure: StepFailure) -> None:
        super().__init__(failure.message)
        self.failure = failure


def step_failure(step: str, error: Exception) -> StepFailure:
    if isinstance(error, KubeError):
        reason = error.reason or _API_REASONS.get(error.status, "ApiError")
        return StepFailure(step, reason, one_line(error.message or str(error)), error.retry_after_s)
    if isinstance(error, RayError):  # RayRefused, RayUnreachable
        return StepFailure(step, type(error).__name__, one_line(str(error)))
    reason = "ApiUnreachable" if isinstance(error, (aiohttp.ClientError, asyncio.TimeoutError)) else "InternalError"
    return StepFailure(step, reason, one_line(f"{type(error).__name__}: {error}"))


@contextmanager
def _step(step: str) -> Iterator[None]:
    """One step of the pass: an expected failure inside becomes PassFailed, naming the step."""
    try:
        yield
    except EXPECTED_FAILURES as error:
        raise PassFailed(step_failure(step, error)) from error


async def reconcile(
    kind: Kind[Any, Any, Any], namespace: str, name: str, clients: Clients, timers: dict[str, datetime]
) -> float | None:
    """One pass over one resource; updates `timers` and returns when to look again (None: only on a change)."""
    with _step(f"reading {kind.name} {name}"):
        body = await clients.kube.get(kind.resource, namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    now = datetime.now(timezone.utc)
    owner, errors = kind.parse(body, clients.settings)
    if owner is None:
        plan = kind.invalid(kind.stored_status(body), body["metadata"].get("generation"), errors, now)
        await apply(kind, plan, body, clients)
        return None
    try:
        with _step("listing its pods and Services"):
            children = await _children(kind, body, clients)
        with _step("observing its clusters"):
            seen = await kind.observe(owner, clients, now, children)
    except PassFailed as failed:
        await _write_failure(kind, body, failed.failure, clients)
        raise
    plan = kind.decide(owner, seen, timers, clients.settings)
    await apply(kind, plan, body, clients)
    timers.clear()
    timers.update(plan.timers)
    created = body["metadata"].get("creationTimestamp")
    kind.record(clients, owner, plan, now, datetime.fromisoformat(created) if created else None)
    return plan.requeue_after


async def delete_children(kind: Kind[Any, Any, Any], body: dict[str, Any], clients: Clients) -> None:
    """On deletion: the kind's last Ray calls, then every pod and Service the resource made, of every generation."""
    children = await _children(kind, body, clients)
    status = kind.stored_status(body)
    seen = ClusterObservation(
        now=datetime.now(timezone.utc),
        pods=children.pods,
        services=[ServiceView.from_object(s) for s in children.services],
    )
    plan = deletion_plan(status or kind.status_model(), seen, kind.stops_before_deletion(status, seen))
    await _carry_out(plan, body["metadata"]["namespace"], clients)


async def _children(kind: Kind[Any, Any, Any], body: dict[str, Any], clients: Clients) -> Children:
    """The resource's pods and Services: those with its labels that name it, by uid, as their owner. Others with
    its labels (an earlier resource of the same name, still terminating; a forgery) are never used or touched,
    but the generations in their names are taken."""
    meta = body["metadata"]
    selector = owner_selector(meta["name"], kind.name)
    pods = await clients.kube.list(PODS, meta["namespace"], selector)
    services = await clients.kube.list(SERVICES, meta["namespace"], selector)
    uid = meta.get("uid", "")
    foreign = [PodView.from_object(p).generation for p in pods if not owned_by(p, uid)]
    foreign += [ServiceView.from_object(s).generation for s in services if not owned_by(s, uid)]
    return Children(
        pods=[PodView.from_object(pod) for pod in pods if owned_by(pod, uid)],
        services=[service for service in services if owned_by(service, uid)],
        foreign_generations=frozenset(foreign),
    )


async def apply(kind: Kind[Any, Any, Any], plan: Plan[Any], body: dict[str, Any], clients: Clients) -> None:
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    failure: StepFailure | None = None
    try:
        await _carry_out(plan, namespace, clients)
    except PassFailed as failed:
        failure = failed.failure
    for event in plan.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
    if plan.delete_owner and failure is None:
        with _step(f"deleting {kind.name} {name}"):
            await clients.kube.delete(kind.resource, namespace, name)
        return
    now = datetime.now(timezone.utc)
    if failure is None:
        await _write_status(kind, body, without_failure(plan.status, now, meta.get("generation")), clients)
        return
    await _write_failure(kind, body, failure, clients, plan.status_on_failure or plan.status)
    raise PassFailed(failure)


async def _write_failure(
    kind: Kind[Any, Any, Any],
    body: dict[str, Any],
    failure: StepFailure,
    clients: Clients,
    status: Any = None,
) -> None:
    """The status (the plan's, else the stored one) with the failure in a condition; an Event if it is news."""
    stored = kind.stored_status(body)
    base = status if status is not None else stored or kind.status_model()
    failed, news = with_failure(base, stored, failure, datetime.now(timezone.utc), body["metadata"].get("generation"))
    if news:
        kopf.event(body, type="Warning", reason=failure.reason, message=failure.message)
    try:
        await _write_status(kind, body, failed, clients)
    except PassFailed as unwritten:
        log.warning("could not write the status of %s: %s", body["metadata"]["name"], unwritten.failure.message)


async def _write_status(kind: Kind[Any, Any, Any], body: dict[str, Any], status: Any, clients: Clients) -> None:
    meta = body["metadata"]
    patch = status_patch(status, body.get("status"))
    if patch is not None:
        with _step("writing the status"):
            await clients.kube.patch_status(kind.resource, meta["namespace"], meta["name"], patch)


async def _carry_out(plan: Plan[Any], namespace: str, clients: Clients) -> None:
    """Everything but Events and the status, in the order the module docstring gives; stops at the first failure."""
    kube = clients.kube
    for pod in plan.delete_pods:
        with _step(f"deleting Pod {pod}"):
            await kube.delete(PODS, namespace, pod)
    for service in plan.delete_services:
        with _step(f"deleting Service {service}"):
            await kube.delete(SERVICES, namespace, service)
    for kind, name in plan.delete_access:
        with _step(f"deleting {kind} {name}"):
            await kube.delete(RESOURCES_BY_KIND[kind], namespace, name)
    for obj in plan.create:
        resource = RESOURCES_BY_KIND[obj["kind"]]
        with _step(f"creating {obj['kind']} {obj['metadata']['name']}"):
            if resource is SECRETS:
                await kube.replace(resource, namespace, clients.secrets.filled(obj))
            elif resource is NETWORK_POLICIES:
                await kube.replace(resource, namespace, obj)
            else:
                await kube.create(resource, namespace, obj)
    for action in plan.ray:
        with _step(_ray_step(action)):
            await call_ray(clients.ray, action)
    for service, patch in plan.patch_services.items():
        with _step(f"patching Service {service}"):
            await kube.patch(SERVICES, namespace, service, patch)


def _ray_step(action: RayAction) -> str:
    if isinstance(action, SubmitJob):
        return f"submitting Ray job {action.submission.get('submission_id', '')}"
    if isinstance(action, StopJob):
        return f"stopping Ray job {action.submission_id}"
    if isinstance(action, SetTraffic):
        return "setting the canary's share of requests"
    return "deploying the Serve applications"


async def call_ray(ray: RayClient, action: RayAction) -> None:
    if isinstance(action, SubmitJob):
        await ray.submit(action.head, action.submission)
    elif isinstance(action, StopJob):
        try:
            await ray.stop(action.head, action.submission_id)
        except RayUnreachable:
            log.info("could not stop Ray job %s: the head is gone, and the job with it", action.submission_id)
    elif isinstance(action, SetTraffic):
        await ray.set_traffic(action.head, action.setting)
    else:
        assert isinstance(action, DeployServe)
        await ray.deploy_serve(action.head, action.config)
