"""What a BigModelJob's status says about its run: progress, metrics and checkpoint from the driver's report."""

from __future__ import annotations

import math

from bigmodel.api.job import BigModelJobStatus, CheckpointRef, Progress, TrainingMetrics
from bigmodel.api.training_report import TrainingReport


def absorb_report(status: BigModelJobStatus, report: TrainingReport) -> None:
    """The driver's latest report, as the status's progress, metrics, last checkpoint and model."""
    status.worker_failures = max(status.worker_failures, report.worker_restarts)
    status.workers.training = report.world_size or status.workers.training
    metrics = {name: value for name, value in report.metrics.items() if value is not None and math.isfinite(value)}
    status.metrics = TrainingMetrics(
        loss=metrics.get("loss"),
        samples_per_second=metrics.get("samples_per_second"),
        tokens_per_second=metrics.get("tokens_per_second"),
        non_finite=sorted(name for name in report.metrics if name not in metrics),
    )
    eta = metrics.get("eta_seconds")
    status.progress = Progress(
        percent=min(100, int(100 * report.step / report.total_steps)) if report.total_steps else 0,
        step=report.step,
        total_steps=report.total_steps or None,
        epoch=report.epoch,
        eta_seconds=int(eta) if eta is not None else None,
        steps_redone=report.steps_redone,
        moved_time=status.progress.moved_time,  # the job decision's to move
    )
    if report.checkpoint is not None:
        if status.last_checkpoint is None or report.checkpoint.step != status.last_checkpoint.step:
            status.last_checkpoint = CheckpointRef.model_validate(report.checkpoint.model_dump())
    if report.model_uri:
        status.model_uri = report.model_uri
    status.skipped_checkpoints += [uri for uri in report.skipped_checkpoints if uri not in status.skipped_checkpoints]


def running_message(status: BigModelJobStatus) -> str:
    progress = status.progress
    if not progress.total_steps:
        return "training: waiting for the first step"
    diverged = f"; {', '.join(status.metrics.non_finite)} not finite" if status.metrics.non_finite else ""
    return f"training: step {progress.step}/{progress.total_steps}, epoch {progress.epoch + 1}{diverged}"


def success_message(status: BigModelJobStatus) -> str:
    model = f"; model at {status.model_uri}" if status.model_uri else ""
    return f"training finished after {status.progress.step} steps{model}"


def resume_point(status: BigModelJobStatus) -> str:
    checkpoint = status.last_checkpoint
    return f"resuming from checkpoint step {checkpoint.step}" if checkpoint else "starting over: no checkpoint yet"


def resize_message(before: int, now: int, desired: int, status: BigModelJobStatus) -> str | None:
    """Why the run's world size changed, once it trains on another number of workers than before."""
    if not before or not now or before == now:
        return None
    checkpoint = status.last_checkpoint
    since = f", from checkpoint step {checkpoint.step}" if checkpoint else ""
    if now < before:
        return f"training goes on with {now} of {desired} workers{since}: workers were lost and none replaced them yet"
    return f"training grew to {now} of {desired} workers{since}: capacity came back"
