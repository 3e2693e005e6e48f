"""The model a BigModelService serves and the Serve applications that serve it (and a canary), on any of its
clusters."""

from __future__ import annotations

from typing import Any

from bigmodel.api.service import ServedModel
from bigmodel.builders.serve_app import app_args, model_version, serve_deploy_config
from bigmodel.reconcile.plans import DeployServe
from bigmodel.reconcile.service_canary import Versions
from bigmodel.reconcile.service_observed import SourceProblem
from bigmodel.reconcile.service_pass import ServicePass

POLL_SOURCE_S = 5.0


def desired_model(d: ServicePass) -> ServedModel | None:
    """The model to serve: the source's, or while the source is unavailable, the one already served."""
    if d.source is not None:
        return ServedModel(source=d.source.uri, version=model_version(d.source.uri, d.source.revision))
    return d.before.model if d.before.model.source else None


def desired_config(d: ServicePass, versions: Versions) -> dict[str, Any]:
    name = d.service.metadata.name
    stable, canary = versions.stable, versions.canary
    args = app_args(name, d.spec, stable.source or "", stable.version or "")
    canary_args = app_args(name, d.spec, canary.source or "", canary.version or "") if canary else None
    return serve_deploy_config(name, d.spec, args, canary_args)


def converge_app(d: ServicePass, generation: int, config: dict[str, Any]) -> str | None:
    """Deploy the desired applications (the service's, and a canary's) where they are not; the status of the
    service's application, None while Ray is unreachable. A service's head is ready only once its Serve proxy is
    (builders/ray_cluster.py): its dashboard having answered is what counts here."""
    head = d.seen.head(generation)
    ray = d.seen.cluster(generation)
    if head is None or not head.running or not ray.reachable:
        d.busy = True
        return None
    app = ray.app
    stable, *canary = config["applications"]
    canary_runs = ray.canary.runs(canary[0]) if canary and ray.canary else not canary and ray.canary is None
    if app is None or not app.runs(stable) or not canary_runs:
        d.plan.ray.append(DeployServe(head.ray_head, config))
        d.busy = True
        if app is None or not app.runs(stable):
            return "DEPLOYING"
    if app.status != "RUNNING":
        d.busy = True
    return app.status


def wait_for_source(d: ServicePass) -> None:
    """Nothing to serve yet (or any more): say why, once, and look again later unless waiting cannot help."""
    problem = d.seen.source
    assert isinstance(problem, SourceProblem)
    if not d.had("ModelLoaded") and not any(
        c.type == "ModelLoaded" and c.reason == problem.reason and c.message == problem.message
        for c in d.before.conditions
    ):
        d.event("Warning" if problem.final else "Normal", problem.reason, problem.message)
    d.condition("ModelLoaded", False, problem.reason, problem.message)
    d.condition("Ready", False, problem.reason, problem.message)
    d.status.phase = "Failed" if problem.final else "Pending"
    d.status.message = problem.message
    d.plan.requeue_after = None if problem.final else POLL_SOURCE_S
