"""What a BigModelService's status says, computed last in a pass from what it saw and decided."""

from __future__ import annotations

from typing import Any

from bigmodel.api.service import BigModelService, Canary, ServedModel, ServicePhase
from bigmodel.api.wire import GENERATION_LABEL, ROLE_LABEL, SERVE_PORT
from bigmodel.builders.naming import serving_service_name
from bigmodel.reconcile.service_app import desired_model
from bigmodel.reconcile.service_canary import traffic
from bigmodel.reconcile.service_observed import FAILED_APP_STATES, ServeAppView, SourceProblem
from bigmodel.reconcile.service_pass import HEAD_RESTARTING, ServicePass


def service_url(service: BigModelService) -> str:
    return f"http://{serving_service_name(service.metadata.name)}.{service.metadata.namespace}.svc:{SERVE_PORT}"


def report(d: ServicePass, model: ServedModel, app_status: str | None) -> None:
    """Replicas, workers, URL, conditions, phase and message of the serving cluster; when to look again."""
    status = d.status
    assert status.serving is not None
    status.url = service_url(d.service)
    if d.head_restart is not None:
        report_head_restart(d, d.head_restart)
        return
    if d.had("Degraded"):
        d.condition("Degraded", False, "HeadRecovered", "the Ray head is back")
    status.serving.application = app_status
    ray = d.seen.cluster(d.active)
    app = ray.app if ray.reachable else None
    serving_now = count_replicas(d, app) > 0 and app_status is not None
    count_workers(d)
    loaded = app_status == "RUNNING"
    if loaded:
        status.model = model
    status.versions = traffic(d)
    status.traffic = ", ".join(f"{v.version} {v.percent}%" for v in status.versions) or None
    upgrading = set_conditions(d, model, app, app_status, serving_now)
    status.phase = phase(d, serving_now, upgrading, app_status)
    status.message = message(d, app_status, app.message if app else "")
    if status.phase == "Ready" and d.before.phase != "Ready":
        d.event("Normal", "Ready", f"serving {model.source} (version {model.version}) at {status.url}")
    # Serve's demand changes without any Kubernetes event, so a Ready service is still looked at every poll_s.
    d.plan.requeue_after = d.busy_poll_s if d.busy or status.phase != "Ready" else d.poll_s


def count_replicas(d: ServicePass, app: ServeAppView | None) -> int:
    """Running and desired replicas of the serving cluster; returns the running ones."""
    running, desired = (app.running_replicas, app.target_replicas) if app else (0, 0)
    if app is not None and app.status == "DEPLOYING" and not app.replica_states:
        # Right after a config change Serve reports the application before its deployments; the replicas that were
        # serving still are.
        running, desired = d.before.replicas.running, d.before.replicas.desired
    replicas = d.status.replicas
    replicas.running, replicas.desired = running, desired
    d.status.replicas_ready = f"{running}/{desired}"
    return running


def report_head_restart(d: ServicePass, why: str) -> None:
    """While the head is re-created, Ray cannot be asked: the workers whose Serve proxy answers (their pods are ready)
    say whether the service still serves; the replica counts and the application stay as Ray last said."""
    status = d.status
    generation = d.active
    serving = count_workers(d)
    status.replicas = d.before.replicas.model_copy()
    status.replicas_ready = d.before.replicas_ready
    d.condition("Degraded", True, HEAD_RESTARTING, f"the Ray head of cluster {generation} is being re-created: {why}")
    d.condition(
        "Ready",
        serving > 0,
        "Serving" if serving else "NotServing",
        f"{serving} worker pod(s) serving while the Ray head is re-created",
    )
    if serving:
        status.phase = "Upgrading" if d.pending is not None else "Ready"
    else:
        status.phase = "Deploying"
    status.message = f"the Ray head of cluster {generation} is being re-created ({why}); {serving} worker pod(s) serve"
    d.plan.requeue_after = d.busy_poll_s


def count_workers(d: ServicePass) -> int:
    """Ready and desired worker pods of the serving cluster, the ones this pass creates included; returns how many
    serve. A worker counts as ready when its Serve proxy answers (its pod is ready) or, since Serve runs a proxy only
    where a replica runs, when its Ray node is alive and waits for one."""
    workers = [p for p in d.seen.workers(d.active) if not p.failed]
    counts = d.status.workers
    counts.desired = len(workers) + sum(1 for obj in d.plan.create if _is_worker_of(obj, d.active))
    nodes = d.seen.cluster(d.active).nodes
    counts.ready = sum(1 for p in workers if p.ready or p.name in nodes)
    d.status.workers_ready = f"{counts.ready}/{counts.desired}"
    return sum(1 for p in workers if p.ready)


def _is_worker_of(obj: dict[str, Any], generation: int) -> bool:
    labels = obj.get("metadata", {}).get("labels", {})
    return labels.get(ROLE_LABEL) == "worker" and labels.get(GENERATION_LABEL) == str(generation)


def set_conditions(
    d: ServicePass, model: ServedModel, app: ServeAppView | None, app_status: str | None, serving_now: bool
) -> bool:
    """Ready, ModelLoaded and UpgradeInProgress; returns whether an upgrade is in progress."""
    ready_message = (
        f"{app.running_replicas} of {app.target_replicas} replicas running" if app else "the Ray cluster is starting"
    )
    d.condition("Ready", serving_now, "Serving" if serving_now else "NotServing", ready_message)
    loaded = app_status == "RUNNING"
    if loaded:
        d.condition("ModelLoaded", True, "Loaded", f"version {model.version} from {model.source}")
    elif app_status == "DEPLOY_FAILED":
        d.condition("ModelLoaded", False, "FailedToLoad", app.message if app else "")
    else:
        d.condition("ModelLoaded", False, "Loading", "the replicas are loading the model")
    rolling = serving_now and not loaded
    # A canary rolled back is over for its version, though its application is still being removed.
    canary = d.status.canary if d.status.canary is None or d.status.canary.result != "RolledBack" else None
    upgrading = rolling or d.pending is not None or canary is not None
    if canary is not None:
        d.condition("UpgradeInProgress", True, "Canary", canary_message(canary))
    elif d.pending is not None:
        d.condition("UpgradeInProgress", True, "NewCluster", f"building cluster {d.pending}; cluster {d.active} serves")
    elif rolling:
        d.condition(
            "UpgradeInProgress", True, "RollingUpdate", f"Serve is rolling the replicas to version {model.version}"
        )
    elif d.status.failed_cluster_spec != d.digest and not rolled_back(d):
        d.condition("UpgradeInProgress", False, "UpToDate", "")
    return upgrading


def rolled_back(d: ServicePass) -> bool:
    """Whether the spec still names a version whose canary was rolled back: the condition keeps saying so."""
    desired = desired_model(d)
    return (
        d.status.rolled_back_version is not None
        and desired is not None
        and (desired.version == d.status.rolled_back_version)
    )


_DONE = {"Promoted": "promoted", "RolledBack": "rolled back", "Cancelled": "cancelled"}


def canary_message(canary: Canary) -> str:
    arms = (
        f"canary {canary.canary.requests} requests, {canary.canary.errors} errors, p99 {canary.canary.p99}; "
        f"serving version {canary.stable.requests} requests, {canary.stable.errors} errors, p99 {canary.stable.p99}"
    )
    steps = {
        "Deploying": "its replicas are starting",
        "Analyzing": f"it takes {canary.percent}% of the requests: {arms}",
        "Promoting": f"promoted ({canary.reason}); the service rolls to it",
        "Removing": f"{_DONE[canary.result or 'Cancelled']} ({canary.reason}); its application is being removed",
    }
    return f"version {canary.version}: {steps[canary.phase]}"


def phase(d: ServicePass, serving: bool, upgrading: bool, app_status: str | None) -> ServicePhase:
    if serving:
        return "Upgrading" if upgrading else "Ready"
    if app_status in FAILED_APP_STATES:
        return "Failed"
    return "Deploying" if d.seen.head(d.active) else "Pending"


def message(d: ServicePass, app_status: str | None, app_message: str) -> str:
    if d.pending is not None:
        return f"upgrading: cluster {d.pending} is being built"
    if app_status in FAILED_APP_STATES:
        return f"the application is {app_status}: {app_message}"
    if app_status is None:
        return "waiting for the Ray cluster"
    if isinstance(d.seen.source, SourceProblem):
        return f"serving the last model; {d.seen.source.message}"
    if d.status.canary is not None:
        return canary_message(d.status.canary)
    if rolled_back(d):
        return f"version {d.status.rolled_back_version} was rolled back; version {d.status.model.version} serves"
    return f"application {app_status}"
