"""The pure decisions of a run: how many steps, when to checkpoint, how progress and lost work are counted."""

from __future__ import annotations

import math

import pytest

from bigmodel.api.job import BuiltinWorkload, TrainingSpec
from bigmodel.runtime.progress import ProgressEvent, ProgressLog, percent_and_eta
from bigmodel.runtime.schedule import learning_rate_at
from bigmodel.runtime.train_loop import LoopSettings, dealt, plan_steps, steps


def _settings(
    every_steps: int | None = None, every_epochs: int | None = None, replicas: int = 2, **workload: object
) -> LoopSettings:
    return LoopSettings(
        workload=BuiltinWorkload.model_validate({"task": "digits", **workload}, by_alias=True),
        storage="/unused",
        replicas=replicas,
        keep_last=3,
        every_steps=every_steps,
        every_epochs=every_epochs,
    )


def test_steps_split_the_data_over_workers_and_stop_at_max_steps() -> None:
    plan = plan_steps(_settings(epochs=3, batchSize=10), samples=105)
    assert (plan.steps_per_epoch, plan.total_steps) == (5, 15)
    capped = plan_steps(_settings(epochs=3, batchSize=10, maxSteps=7), samples=105)
    assert capped.total_steps == 7


def test_a_batch_larger_than_the_data_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="batchSize 64 x 4 workers is larger than the 100 training samples"):
        plan_steps(_settings(batchSize=64, replicas=4), samples=100)


def test_default_cadence_is_every_epoch_and_the_last_step_always_saves() -> None:
    plan = plan_steps(_settings(epochs=3, batchSize=10, maxSteps=13), samples=100)
    due = [step for step in range(1, plan.total_steps + 1) if plan.checkpoint_due(step)]
    assert due == [5, 10, 13]


def test_every_steps_alone_does_not_add_epoch_checkpoints() -> None:
    plan = plan_steps(_settings(every_steps=4, epochs=2, batchSize=10), samples=100)
    due = [step for step in range(1, plan.total_steps + 1) if plan.checkpoint_due(step)]
    assert due == [4, 8, 10]


def test_every_steps_and_every_epochs_both_apply() -> None:
    plan = plan_steps(_settings(every_steps=3, every_epochs=2, epochs=4, batchSize=10), samples=100)
    due = [step for step in range(1, plan.total_steps + 1) if plan.checkpoint_due(step)]
    assert due == [3, 6, 9, 10, 12, 15, 18, 20]


def test_epoch_of_a_step_stays_in_the_last_epoch_at_the_end() -> None:
    plan = plan_steps(_settings(epochs=2, batchSize=10), samples=100)
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


def test_accumulated_micro_batches_make_each_step_larger_and_the_epoch_shorter() -> None:
    settings = _settings(epochs=1, batchSize=10).model_copy(
        update={"training": TrainingSpec(gradient_accumulation_steps=2)}
    )
    assert plan_steps(settings, samples=105).steps_per_epoch == 2
    with pytest.raises(ValueError, match="batchSize 10 x 2 workers x 8 accumulated is larger than the 105"):
        plan_steps(settings.model_copy(update={"training": TrainingSpec(gradient_accumulation_steps=8)}), 105)


def test_learning_rate_warms_up_linearly_then_decays_along_a_cosine_to_its_floor() -> None:
    training = TrainingSpec(warmup_steps=4, learning_rate_decay="cosine", min_learning_rate_ratio=0.1)
    rates = [learning_rate_at(step, peak=1.0, total_steps=14, training=training) for step in range(14)]
    assert rates[:4] == [0.25, 0.5, 0.75, 1.0]
    assert (
        rates[4] == 1.0
        and rates[9] == pytest.approx(0.55)
        and rates[13] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.9)))
    )
    assert all(later <= earlier for earlier, later in zip(rates[4:-1], rates[5:], strict=True)), (
        "the decay went up again"
    )
    assert learning_rate_at(20, peak=1.0, total_steps=14, training=training) == pytest.approx(0.1), "past the plan"


def test_the_default_schedule_is_the_constant_learning_rate() -> None:
    assert {learning_rate_at(step, peak=3e-4, total_steps=10, training=TrainingSpec()) for step in range(10)} == {3e-4}


def test_a_step_is_the_same_micro_batches_whatever_the_number_of_workers() -> None:
    settings = _settings(epochs=2, batchSize=3, replicas=2).model_copy(
        update={"training": TrainingSpec(gradient_accumulation_steps=2)}
    )
    plan = plan_steps(settings, samples=50)
    run = list(steps(50, settings, plan, start=0))
    assert len(run) == plan.total_steps == 8
    for _, micro_batches in run:
        assert len(micro_batches) == 4 and all(len(batch) == 3 for batch in micro_batches)
    epoch_one = [i for epoch, batches in run if epoch == 0 for batch in batches for i in batch]
    assert len(set(epoch_one)) == len(epoch_one), "a sample repeats within an epoch"
    # Resuming mid-epoch, from any checkpoint, takes up exactly where the run was.
    assert list(steps(50, settings, plan, start=5)) == run[5:]
    # Two workers take two micro-batches each; one worker takes all four; three workers take two, two and one plus a
    # weightless repeat: every rank runs as many passes, and every micro-batch is trained on exactly once.
    _, first = run[0]
    for world in (1, 2, 3, 4):
        shares = [dealt(first, rank, world) for rank in range(world)]
        assert len({len(share) for share in shares}) == 1
        trained = sorted(i for share in shares for batch in share if batch is not None for i in batch)
        assert trained == sorted(i for batch in first for i in batch)
