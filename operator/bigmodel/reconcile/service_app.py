"""The model a BigModelService serves and the Serve application that serves it, on any of its clusters."""

from __future__ import annotations

from typing import Any

from bigmodel.api.service import ServedModel
from bigmodel.builders.serve_app import app_args, model_version, serve_deploy_config
from bigmodel.reconcile.plans import DeployServe
from bigmodel.reconcile.service_observed import SourceProblem
from bigmodel.reconcile.service_pass import ServicePass

POLL_SOURCE_S = 5.0


def desired_model(d: ServicePass) -> ServedModel | None:
    """The model to serve: the source's, or while the source is unavailable, the one already served."""
    if d.source is not None:
        return ServedModel(source=d.source.uri, version=model_version(d.source.uri, d.source.revision))
    return d.before.model if d.before.model.source else None


def desired_config(d: ServicePass, model: ServedModel) -> dict[str, Any]:
    name = d.service.metadata.name
    args = app_args(name, d.spec, model.source or "", model.version or "")
    return serve_deploy_config(name, d.spec, args)


def converge_app(d: ServicePass, generation: int, config: dict[str, Any]) -> str | None:
    """Deploy the desired application where it is not; the app's status, None while Ray is unreachable. A service's
    head is ready only once its Serve proxy is (builders/ray_cluster.py): its dashboard having answered is what
    counts here."""
    head = d.seen.head(generation)
    ray = d.seen.cluster(generation)
    if head is None or not head.running or not ray.reachable:
        d.busy = True
        return None
    app = ray.app
    if app is None or not app.runs(config["applications"][0]):
        d.plan.ray.append(DeployServe(head.ray_head, config))
        d.busy = True
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
