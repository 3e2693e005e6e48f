"""The pure decisions of a run: how many steps, when to checkpoint, how progress and lost work are counted."""

from __future__ import annotations

import pytest

from bigmodel.api.job import BuiltinWorkload
from bigmodel.runtime.progress import ProgressEvent, ProgressLog, percent_and_eta
from bigmodel.runtime.train_loop import LoopSettings, plan_steps


def _settings(every_steps: int | None = None, every_epochs: int | None = None, **workload: object) -> LoopSettings:
    return LoopSettings(
        workload=BuiltinWorkload.model_validate({"task": "digits", **workload}, by_alias=True),
        storage="/unused",
        keep_last=3,
        every_steps=every_steps,
        every_epochs=every_epochs,
    )


def test_steps_split_the_data_over_workers_and_stop_at_max_steps() -> None:
    plan = plan_steps(_settings(epochs=3, batchSize=10), samples=105, world_size=2)
    assert (plan.steps_per_epoch, plan.total_steps) == (5, 15)
    capped = plan_steps(_settings(epochs=3, batchSize=10, maxSteps=7), samples=105, world_size=2)
    assert capped.total_steps == 7


def test_a_batch_larger_than_the_data_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="batchSize 64 x 4 workers is larger than the 100 training samples"):
        plan_steps(_settings(batchSize=64), samples=100, world_size=4)


def test_default_cadence_is_every_epoch_and_the_last_step_always_saves() -> None:
    plan = plan_steps(_settings(epochs=3, batchSize=10, maxSteps=13), samples=100, world_size=2)
    due = [step for step in range(1, plan.total_steps + 1) if plan.checkpoint_due(step)]
    assert due == [5, 10, 13]


def test_every_steps_alone_does_not_add_epoch_checkpoints() -> None:
    plan = plan_steps(_settings(every_steps=4, epochs=2, batchSize=10), samples=100, world_size=2)
    due = [step for step in range(1, plan.total_steps + 1) if plan.checkpoint_due(step)]
    assert due == [4, 8, 10]


def test_every_steps_and_every_epochs_both_apply() -> None:
    plan = plan_steps(_settings(every_steps=3, every_epochs=2, epochs=4, batchSize=10), samples=100, world_size=2)
    due = [step for step in range(1, plan.total_steps + 1) if plan.checkpoint_due(step)]
    assert due == [3, 6, 9, 10, 12, 15, 18, 20]


def test_epoch_of_a_step_stays_in_the_last_epoch_at_the_end() -> None:
    plan = plan_steps(_settings(epochs=2, batchSize=10), samples=100, world_size=2)
    assert [plan.epoch_of(step) for step in (0, 4, 5, 9, 10)] == [0, 0, 1, 1, 1]


def test_percent_and_eta() -> None:
    assert percent_and_eta(25, 100, 5.0) == (25, 15)
    assert percent_and_eta(25, 100, None) == (25, None)
    assert percent_and_eta(0, 0, 1.0) == (0, None)


def _event(step: int, kind: str = "step") -> ProgressEvent:
    return ProgressEvent(kind=kind, step=step, total_steps=100, epoch=0, epochs=1)  # type: ignore[arg-type]


def test_progress_log_counts_restarts_and_work_redone() -> None:
    log = ProgressLog()
    log.begin_attempt(0)
    for step in (10, 20, 27):
        log.record(_event(step, "checkpoint" if step % 10 == 0 else "step"))
    log.begin_attempt(20)
    log.record(_event(100, "done"))
    snapshot = log.snapshot()
    assert snapshot.worker_restarts == 1
    assert [a.resumed_from_step for a in snapshot.attempts] == [0, 20]
    assert snapshot.steps_trained_twice() == 7
    assert [c.step for c in snapshot.checkpoints] == [10, 20]
