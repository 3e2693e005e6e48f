"""Training progress: events the rank-0 worker sends, and the actor that keeps them for the driver.

The actor outlives worker-group restarts (the driver owns it), so it is the one place that sees a
run across failures: which step each attempt resumed from and how far each got.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import pairwise
from typing import Any, Literal

import ray
from ray.actor import ActorHandle
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from bigmodel.api import wire
from bigmodel.api.job import CheckpointRef
from bigmodel.api.training_report import TrainingReport

EventKind = Literal["step", "checkpoint", "resume", "done"]


@dataclass(frozen=True)
class ProgressEvent:
    kind: EventKind
    step: int
    total_steps: int
    epoch: int
    epochs: int
    attempt: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    checkpoint_uri: str | None = None
    model_uri: str | None = None
    skipped_checkpoints: tuple[tuple[str, str], ...] = ()
    """On a resume: the checkpoints passed over because they would not load, as (uri, why)."""
    time: float = field(default_factory=time.time)


_PLAN_KEYS = {wire.STEP_METRIC, wire.EPOCH_METRIC, wire.TOTAL_STEPS_METRIC, wire.EPOCHS_METRIC}


def event_from_metrics(
    kind: EventKind, metrics: Mapping[str, Any], reports: int, checkpoint_uri: str | None = None
) -> ProgressEvent:
    """Rank 0's reported metrics as a ProgressEvent; without a `step` metric the step is the number of reports.

    Only numbers travel: the status and the summary show figures, and a user may report anything.
    """
    figures = {
        key: float(value)
        for key, value in metrics.items()
        if key not in _PLAN_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool)
    }
    return ProgressEvent(
        kind=kind,
        step=int(metrics.get(wire.STEP_METRIC, reports)),
        total_steps=int(metrics.get(wire.TOTAL_STEPS_METRIC, 0)),
        epoch=int(metrics.get(wire.EPOCH_METRIC, 0)),
        epochs=int(metrics.get(wire.EPOCHS_METRIC, 0)),
        metrics=figures,
        checkpoint_uri=checkpoint_uri,
    )


@dataclass(frozen=True)
class Attempt:
    """One start of the train loop: the first run, or a restart after a worker failure."""

    number: int
    resumed_from_step: int
    last_step: int
    started_at: float
    world_size: int = 0
    """Workers of the attempt (0: not told, as with a user loop)."""


@dataclass
class ProgressSnapshot:
    latest: ProgressEvent | None
    attempts: list[Attempt]
    checkpoints: list[ProgressEvent]
    skipped: dict[str, str] = field(default_factory=dict)
    """Checkpoints passed over on any resume of the run: URI -> why."""

    @property
    def worker_restarts(self) -> int:
        return max(0, len(self.attempts) - 1)

    def steps_trained_twice(self) -> int:
        """Steps redone after failures: work lost between a failure and the checkpoint resumed from."""
        redone = 0
        for previous, following in pairwise(self.attempts):
            redone += max(0, previous.last_step - following.resumed_from_step)
        return redone


def percent_and_eta(step: int, total_steps: int, steps_per_second: float | None) -> tuple[int, int | None]:
    """Progress as a whole percent and the seconds left at the current speed (None until a speed is known)."""
    if total_steps <= 0:
        return 0, None
    percent = min(100, int(100 * step / total_steps))
    if not steps_per_second or steps_per_second <= 0:
        return percent, None
    return percent, int(round((total_steps - step) / steps_per_second))


class ProgressLog:
    """The state behind the actor, kept plain so it is testable without Ray."""

    def __init__(self) -> None:
        self._latest: ProgressEvent | None = None
        self._attempts: list[Attempt] = []
        self._checkpoints: list[ProgressEvent] = []
        self._skipped: dict[str, str] = {}
        self._grow = False

    def begin_attempt(self, resumed_from_step: int, world_size: int = 0) -> int:
        number = len(self._attempts)
        self._attempts.append(Attempt(number, resumed_from_step, resumed_from_step, time.time(), world_size))
        return number

    def record(self, event: ProgressEvent) -> None:
        # A user loop's checkpoint events come from Ray Train's controller, which hears of a report only when it
        # next polls the workers: rank 0 may have sent later steps already, and the line must not go back.
        if not (event.kind == "checkpoint" and self._latest is not None and event.step < self._latest.step):
            self._latest = event
        if self._attempts:
            current = self._attempts[-1]
            if event.step > current.last_step:
                self._attempts[-1] = dataclasses.replace(current, last_step=event.step)
        if event.kind == "checkpoint":
            self._checkpoints.append(event)
        self._skipped.update(event.skipped_checkpoints)

    def ask_to_grow(self) -> None:
        """Rank 0: the run checkpointed and ended its attempt, for the driver to start it again on more workers."""
        self._grow = True

    def growth_asked(self) -> bool:
        """The driver, once an attempt ended: whether it ended to grow (and no longer asks it)."""
        asked, self._grow = self._grow, False
        return asked

    def record_forwarded(self, event: ProgressEvent) -> None:
        """A report of rank 0 as Ray Train's controller heard it (`report_forwarding`).

        Its checkpoints always count: only the controller knows where Ray Train stored them. Its other reports count
        only for a loop that does not report here itself (no attempt begun: a user loop without
        `user_loop.report`), for which they are the only progress there is; a loop that does has sent the same step
        sooner.
        """
        if event.kind == "checkpoint" or not self._attempts:
            self.record(event)

    def snapshot(self) -> ProgressSnapshot:
        return ProgressSnapshot(self._latest, list(self._attempts), list(self._checkpoints), dict(self._skipped))


ProgressRecorder = ray.remote(num_cpus=0, max_restarts=0)(ProgressLog)


def start_recorder() -> tuple[ActorHandle, str]:
    """The run's progress actor, on the driver's own node, and the name a user loop finds it by
    (`bigmodel.runtime.user_loop.report`).

    Its state lives exactly as long as the driver's. Left to Ray's scheduler it can land on a worker node, and the loss
    of that node would then fail every retry of the run: each attempt begins by reporting to it. The name is unique
    to the run: a later driver on the same cluster must not find an earlier run's actor.
    """
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    name = f"progress-{uuid.uuid4().hex}"
    recorder = ProgressRecorder.options(
        scheduling_strategy=here, name=name, namespace=wire.PROGRESS_RECORDER_NAMESPACE
    ).remote()
    return recorder, name


def training_report(snapshot: ProgressSnapshot) -> TrainingReport:
    """The snapshot in the form the operator reads from the driver's progress endpoint."""
    latest = snapshot.latest
    report = TrainingReport(
        worker_restarts=snapshot.worker_restarts,
        resumed_from_step=snapshot.attempts[-1].resumed_from_step if snapshot.attempts else 0,
        steps_redone=snapshot.steps_trained_twice(),
        world_size=snapshot.attempts[-1].world_size if snapshot.attempts else 0,
        skipped_checkpoints=dict(snapshot.skipped),
    )
    if latest is None:
        return report
    report.step, report.total_steps = latest.step, latest.total_steps
    report.epoch, report.epochs = latest.epoch, latest.epochs
    report.metrics = dict(latest.metrics)
    report.done = latest.kind == "done"
    report.model_uri = latest.model_uri
    if snapshot.checkpoints:
        saved = snapshot.checkpoints[-1]
        report.checkpoint = CheckpointRef(
            path=saved.checkpoint_uri or "",
            step=saved.step,
            epoch=saved.epoch,
            time=datetime.fromtimestamp(saved.time, tz=timezone.utc),
        )
    return report
