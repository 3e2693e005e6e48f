"""The slots of a BigModelService's clusters: the serving cluster kept up, cluster-shape upgrades, traffic and
retirement.

A change of the model or of Serve's settings is deployed into the serving cluster in place (Serve rolls the replicas;
service_app.py). A change of the cluster's shape (its digest, service_pass.cluster_digest) builds a pending cluster
next to it; the Service's selector moves to it only once its application is RUNNING, and the old cluster retires,
deleted after RETIRE_DELAY_S. A pending cluster that fails is removed and never took traffic.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from bigmodel.api.service import PendingCluster, RetiringCluster
from bigmodel.api.wire import CLUSTER_SPEC_ANNOTATION, ROLE_LABEL, SERVICE_KIND
from bigmodel.builders.naming import head_pod_name, serving_service_name
from bigmodel.builders.serving_service import serving_selector, serving_service
from bigmodel.reconcile.cluster import ClusterHealth
from bigmodel.reconcile.head_recovery import HeadRecovery, head_recovery
from bigmodel.reconcile.plans import Outcome
from bigmodel.reconcile.service_app import converge_app
from bigmodel.reconcile.service_pass import HEAD_RESTARTING, ServicePass
from bigmodel.reconcile.service_scaling import scale_workers

# Long enough for requests already routed to the old cluster's proxies to complete after the Service moved.
RETIRE_DELAY_S = 30.0

# A pending cluster whose application is not RUNNING by then is given up; the serving cluster keeps the traffic.
UPGRADE_TIMEOUT_S = 900.0


def build(d: ServicePass, generation: int) -> None:
    d.clusters.build(generation, d.spec.workers.min_replicas)
    d.busy = True


def keep_serving_cluster(d: ServicePass) -> int:
    """The serving cluster, built when there is none; its workers scaled. A lost head is re-created in place when
    the cluster's state survives it (head_recovery.py), else the cluster is rebuilt as a new generation. Returns its
    generation."""
    active = d.active
    if d.seen.head(active) is None:
        # A newer cluster whose head exists was built by a pass whose status write was lost: it is the serving one.
        active = d.seen.newest_built(active, d.pending)
    health = d.clusters.health(active)
    recovery = recovery_of(d, active) if health.state == "lost" else None
    if recovery is not None and recovery != "rebuild":
        if d.status.serving is None or d.status.serving.generation != active:
            d.status.serving = d.cluster_ref(active)
        recover_head(d, active, recovery, health)
        return active
    if health.state == "lost":
        rebuilt = d.clusters.next_generation(active, d.pending)
        d.event("Warning", "ClusterLost", f"the Ray head of cluster {active} failed; building cluster {rebuilt}")
        d.clusters.remove(active)
        active = rebuilt
        health = d.clusters.health(active)
    if d.status.serving is None or d.status.serving.generation != active:
        d.status.serving = d.cluster_ref(active)
    if health.state == "absent":
        build(d, active)
    elif health.state == "draining":
        d.busy = True
    elif d.had("Degraded", HEAD_RESTARTING) and not d.seen.cluster(active).reachable:
        # The re-created head runs, but its GCS has not answered yet: the workers still wait for it, and nothing
        # is scaled before Ray can say what it needs.
        d.head_restart = "the re-created Ray head is starting"
        d.busy = True
    else:
        scale_workers(d, active)
    return active


def recovery_of(d: ServicePass, generation: int) -> HeadRecovery:
    head = head_pod_name(d.service.metadata.name, generation, SERVICE_KIND)
    return head_recovery(d.seen, generation, head, fault_tolerant=d.clusters.fault_tolerant, digest=d.digest)


def recover_head(d: ServicePass, generation: int, recovery: HeadRecovery, health: ClusterHealth) -> None:
    """One step of re-creating the lost head of a cluster whose state is in Redis; its workers keep serving."""
    name = head_pod_name(d.service.metadata.name, generation, SERVICE_KIND)
    d.head_restart = health.why
    if recovery == "clear" and health.head is not None:
        d.clusters.remove_pod(health.head)
    elif recovery == "restart":
        d.clusters.restart_head(generation)
        d.event(
            "Warning",
            "HeadRestarted",
            f"the Ray head pod {name} was lost; re-created it in cluster {generation}, whose state comes back from "
            "Redis; its workers serve meanwhile",
        )
        d.count(Outcome.HEAD_RESTARTED)
    d.busy = True


def point_service_at(d: ServicePass, generation: int) -> None:
    """The Service clients call selects the Serve proxies of the serving cluster (its head and its workers)."""
    serving = d.seen.serving
    if serving is None:
        d.plan.create.append(serving_service(d.service, generation))
    elif serving.generation != generation:
        move_traffic(d, generation)


def move_traffic(d: ServicePass, generation: int) -> None:
    """A merge patch of a map merges keys: the selector's keys are set, and a key that selectors of earlier operator
    versions had but this one has not (the head's role, when only the head ran a proxy) is dropped with null."""
    name = d.service.metadata.name
    selector: dict[str, str | None] = {ROLE_LABEL: None, **serving_selector(name, generation)}
    d.plan.patch_services[serving_service_name(name)] = {"spec": {"selector": selector}}


def upgrade_cluster(d: ServicePass, config: dict[str, Any]) -> None:
    """Build, follow, give up or switch to a pending cluster when the cluster's shape changed."""
    status = d.status
    head = d.seen.head(d.active)
    active_digest = head.annotations.get(CLUSTER_SPEC_ANNOTATION, d.digest) if head else d.digest
    pending = d.pending
    if pending is not None:
        pending_head = d.seen.head(pending)
        pending_digest = pending_head.annotations.get(CLUSTER_SPEC_ANNOTATION) if pending_head else d.digest
        if d.digest != pending_digest or d.digest == active_digest:
            d.event("Normal", "UpgradeCancelled", f"cluster {pending} no longer matches the spec")
            d.clusters.remove(pending)
            status.pending = pending = None
    if pending is None:
        if d.digest == active_digest or d.digest == status.failed_cluster_spec:
            return
        pending = d.clusters.next_generation(d.active, d.retiring)
        status.pending = PendingCluster(**d.cluster_ref(pending).model_dump(), started=d.now)
        build(d, pending)
        d.event("Normal", "UpgradeStarted", f"the cluster shape changed; building cluster {pending}")
        return
    scale_workers(d, pending)
    app_status = converge_app(d, pending, config)
    assert status.pending is not None
    status.pending.application = app_status
    failure = upgrade_failure(d, pending, app_status, status.pending.started)
    if failure:
        d.clusters.remove(pending)
        status.pending = None
        status.failed_cluster_spec = d.digest
        d.condition("UpgradeInProgress", False, "UpgradeFailed", failure)
        d.event("Warning", "UpgradeFailed", f"{failure}; cluster {d.active} keeps serving")
        d.count(Outcome.UPGRADE_FAILED)
        return
    if app_status == "RUNNING":
        switch_to(d, pending)


def upgrade_failure(d: ServicePass, pending: int, app_status: str | None, started: datetime) -> str | None:
    if d.clusters.health(pending).state == "lost":
        return f"the Ray head of the new cluster {pending} failed"
    if app_status == "DEPLOY_FAILED":
        app = d.seen.cluster(pending).app
        return f"the application failed to deploy on the new cluster {pending}: {app.message if app else ''}"
    if (d.now - started).total_seconds() > UPGRADE_TIMEOUT_S:
        return f"the new cluster {pending} was not serving within {UPGRADE_TIMEOUT_S:.0f} s"
    return None


def switch_to(d: ServicePass, pending: int) -> None:
    """Traffic moves to the pending cluster; the serving one retires."""
    status = d.status
    old = d.active
    if d.retiring is not None:
        d.clusters.remove(d.retiring)
    move_traffic(d, pending)
    assert status.serving is not None and status.pending is not None
    delete_after = d.now + timedelta(seconds=RETIRE_DELAY_S)
    status.retiring = RetiringCluster(**status.serving.model_dump(), delete_after=delete_after)
    status.serving = d.cluster_ref(pending).model_copy(update={"application": status.pending.application})
    status.pending = None
    d.event("Normal", "UpgradeComplete", f"traffic moved to cluster {pending}; cluster {old} is retired")
    d.count(Outcome.UPGRADE_COMPLETE)


def retire(d: ServicePass) -> None:
    """The retiring cluster goes once its time is up; clusters in no slot go at once."""
    status = d.status
    if status.retiring is not None:
        if d.now >= status.retiring.delete_after:
            d.clusters.remove(status.retiring.generation)
            status.retiring = None
        else:
            d.busy = True
    d.clusters.keep_only(d.active, d.pending, d.retiring)
