"""For a user's own Ray Train loop (`spec.workload.entrypoint`): its progress, as the built-in loop reports it.

    from bigmodel.runtime.user_loop import progress, report

    progress({"loss": loss}, step=step, total_steps=total, epoch=epoch, epochs=epochs, samples=len(batch))
    report({"loss": loss}, checkpoint, step=step, total_steps=total, epoch=epoch, epochs=epochs)

`progress` (every step: cheap) has rank 0 send the step to the run's progress actor, as the built-in loop does;
`report` does that and calls `ray.train.report`, in its place. `bigmodel train`'s live line and summary and the job's
status then show progress, ETA, loss, throughput and the last checkpoint like a built-in task's. Outside a bigmodel run
(no progress actor named in the environment) `progress` does nothing and `report` is `ray.train.report` alone.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import ray
import ray.train
from ray.actor import ActorHandle

from bigmodel.api import wire
from bigmodel.runtime.progress import event_from_metrics, percent_and_eta


@dataclass
class _Attempt:
    """This worker process's start of the loop: Ray Train starts new processes after a failure."""

    recorder: ActorHandle
    number: int
    first_step: int
    started: float
    last_report: float


# One per process, made at rank 0's first report: a loop function has nowhere else to keep it between calls.
_attempt: _Attempt | None = None


def _resumed_from() -> int:
    """The step of the checkpoint this attempt started from, as `report` stored it in the checkpoint's metadata."""
    checkpoint = ray.train.get_checkpoint()
    return int(checkpoint.get_metadata().get(wire.STEP_METRIC, 0)) if checkpoint is not None else 0


def _begin(step: int) -> _Attempt | None:
    """Rank 0's attempt, begun with the run's progress actor at its first call; None outside a bigmodel run."""
    global _attempt
    if _attempt is None:
        name = os.environ.get(wire.PROGRESS_RECORDER_ENV)
        if name is None:
            return None
        recorder = ray.get_actor(name, namespace=wire.PROGRESS_RECORDER_NAMESPACE)
        number = ray.get(recorder.begin_attempt.remote(_resumed_from()))
        now = time.monotonic()
        _attempt = _Attempt(recorder, number, step, now, now)
    return _attempt


def _rates(attempt: _Attempt, step: int, total_steps: int, samples: int | None, world: int) -> dict[str, float]:
    """Progress, the seconds left at this attempt's speed, and samples per second over all workers."""
    now = time.monotonic()
    done, elapsed = step - attempt.first_step, now - attempt.started
    figures: dict[str, float] = {}
    if total_steps > 0:
        figures["progress"] = min(1.0, step / total_steps)
        _, eta = percent_and_eta(step, total_steps, done / elapsed if done > 0 and elapsed > 0 else None)
        if eta is not None:
            figures["eta_seconds"] = float(eta)
    since = now - attempt.last_report
    if samples and since > 0:
        figures["samples_per_second"] = samples * world / since
    attempt.last_report = now
    return figures


def _plan(step: int, total_steps: int | None, epoch: int | None, epochs: int | None) -> dict[str, int]:
    named = {
        wire.STEP_METRIC: step,
        wire.TOTAL_STEPS_METRIC: total_steps,
        wire.EPOCH_METRIC: epoch,
        wire.EPOCHS_METRIC: epochs,
    }
    return {key: value for key, value in named.items() if value is not None}


def progress(
    metrics: Mapping[str, Any],
    *,
    step: int,
    total_steps: int | None = None,
    epoch: int | None = None,
    epochs: int | None = None,
    samples: int | None = None,
) -> dict[str, Any]:
    """Rank 0 sends the step to the run's progress actor; other ranks and runs outside bigmodel do nothing.

    Cheap enough for every step: unlike `ray.train.report`, which in Ray 2.60 waits until Ray Train's controller
    takes the previous report (it polls every 2 s), so a loop that reports every step trains at most a step per poll.
    `step` counts optimizer steps from the start of the run (after a resume it goes on from the checkpoint's);
    `total_steps` and `epochs` are the run's plan, for the percentage and the ETA; `samples` is what this worker
    trained on since its last call, for the throughput. Returns the metrics with the plan and the figures added.
    """
    figures = dict(metrics) | _plan(step, total_steps, epoch, epochs)
    context = ray.train.get_context()
    attempt = _begin(step) if context.get_world_rank() == 0 else None
    if attempt is not None:
        figures |= _rates(attempt, step, total_steps or 0, samples, context.get_world_size())
        event = dataclasses.replace(event_from_metrics("step", figures, step), attempt=attempt.number)
        attempt.recorder.record.remote(event)
    return figures


def report(
    metrics: Mapping[str, Any],
    checkpoint: ray.train.Checkpoint | None = None,
    *,
    step: int,
    total_steps: int | None = None,
    epoch: int | None = None,
    epochs: int | None = None,
    samples: int | None = None,
) -> None:
    """`ray.train.report(metrics, checkpoint)` with the run's `progress`; every rank must call it, as that one.

    The checkpoint is stored with its step, so that the next attempt knows where it resumed from, and Ray Train keeps
    the newest `spec.checkpoint.keepLast` of them.
    """
    if checkpoint is not None:
        checkpoint.update_metadata({wire.STEP_METRIC: step})
    figures = progress(metrics, step=step, total_steps=total_steps, epoch=epoch, epochs=epochs, samples=samples)
    ray.train.report(figures, checkpoint=checkpoint)
