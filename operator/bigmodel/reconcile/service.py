"""The BigModelService decision: from the service and what is observed, the actions to take and the status to write.

One pass, in order: the model to serve (service_app.py), the serving cluster kept up and its workers scaled
(service_upgrade.py, service_scaling.py), the Service pointed at it, a canary version followed (service_canary.py),
the applications deployed where they are not, a cluster-shape upgrade followed, old clusters retired, and the status
(service_status.py). Pure and level-based like
the job decision: the same inputs always give the same plan.
"""

from __future__ import annotations

from datetime import datetime

from bigmodel.api.service import BigModelService, BigModelServiceStatus
from bigmodel.builders.gcs_fault_tolerance import GcsFaultTolerance
from bigmodel.builders.network_policy import OperatorPeer
from bigmodel.reconcile.decision import validation_plan
from bigmodel.reconcile.service_app import converge_app, desired_config, desired_model, wait_for_source
from bigmodel.reconcile.service_canary import follow_canary
from bigmodel.reconcile.service_observed import ServiceObservation
from bigmodel.reconcile.service_pass import POLL_READY_S, ServicePass, ServicePlan
from bigmodel.reconcile.service_status import report
from bigmodel.reconcile.service_upgrade import keep_serving_cluster, point_service_at, retire, upgrade_cluster


def decide_service(
    service: BigModelService,
    seen: ServiceObservation,
    timers: dict[str, datetime] | None = None,
    poll_s: float = POLL_READY_S,
    operator: OperatorPeer | None = None,
    gcs: GcsFaultTolerance | None = None,
) -> ServicePlan:
    """The plan for one service. Pure: the clock comes in the observation, the idle timers in `timers`; `gcs`: where
    new clusters keep their GCS tables (None: in the head's memory)."""
    d = ServicePass(service, seen, timers, poll_s, operator or OperatorPeer(), gcs)
    model = desired_model(d)
    if model is None:
        wait_for_source(d)
        return d.finish_pass()
    active = keep_serving_cluster(d)
    point_service_at(d, active)
    versions = follow_canary(d, model, active)
    config = desired_config(d, versions)
    app_status = converge_app(d, active, config)
    upgrade_cluster(d, config)
    retire(d)
    report(d, versions.stable, app_status)
    # Timers of pods that are gone are forgotten.
    names = {pod.name for pod in seen.pods}
    d.plan.timers = {name: since for name, since in d.plan.timers.items() if name in names}
    return d.finish_pass()


def service_validation_plan(
    status: BigModelServiceStatus | None, generation: int | None, errors: list[str], now: datetime
) -> ServicePlan:
    """An invalid spec: say where and why, change nothing that serves, and wait for the next edit."""
    plan = validation_plan(status or BigModelServiceStatus(), generation, errors, now)
    if plan.status.phase in ("Pending", "Deploying"):
        plan.status.phase = "Failed"
    return plan
