"""What the operator sees of a BigModelJob beyond its pods: its Ray job and its driver's progress report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bigmodel.api.training_report import TrainingReport
from bigmodel.reconcile.observed import ClusterObservation

RayJobState = Literal["PENDING", "RUNNING", "STOPPED", "SUCCEEDED", "FAILED"]


@dataclass(frozen=True)
class RayJobView:
    submission_id: str
    state: RayJobState
    message: str = ""
    cannot_run: bool = False
    """The driver said no rebuilt cluster could run it (wire.CANNOT_RUN_MARKER)."""


@dataclass(frozen=True, kw_only=True)
class JobObservation(ClusterObservation):
    """Everything observed about one BigModelJob in one pass; Ray as seen through the current cluster's head."""

    ray_reachable: bool = False
    ray_job: RayJobView | None = None
    report: TrainingReport | None = None
