"""A user loop's progress, as `user_loop` and Ray Train's controller report it, reads as a built-in loop's does."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from bigmodel.api.job import BigModelJobSpec
from bigmodel.console import progress_line
from bigmodel.runtime.driver import latest_checkpoint
from bigmodel.runtime.progress import EventKind, ProgressEvent, ProgressLog, event_from_metrics, training_report
from bigmodel.runtime.ray_checkpoints import unkept

T = 1_700_000_000.0
URI = "/runs/job/ray/job/checkpoint_2026-01-01_00-00-00.000000"


def _builtin_run() -> ProgressLog:
    """What the built-in loop sends: a resume, steps, a checkpoint with its URI, done."""
    log = ProgressLog()
    attempt = log.begin_attempt(0)
    plan = {"total_steps": 20, "epochs": 2, "attempt": attempt, "time": T}
    log.record(ProgressEvent("resume", 0, epoch=0, metrics={}, **plan))
    log.record(ProgressEvent("step", 5, epoch=0, metrics={"loss": 0.9, "progress": 0.25}, **plan))
    log.record(ProgressEvent("checkpoint", 10, epoch=1, metrics={"loss": 0.5}, checkpoint_uri=URI, **plan))
    log.record(ProgressEvent("done", 20, epoch=1, metrics={"loss": 0.2, "progress": 1.0}, **plan))
    return log


def _user_run() -> ProgressLog:
    """The same run from a user loop: `progress` on rank 0, the checkpoint forwarded by Ray Train's controller (with a
    copy of a step that `progress` sent already), and the driver's done."""
    log = ProgressLog()
    attempt = log.begin_attempt(0)
    plan = {"total_steps": 20, "epochs": 2}

    def sent(kind: EventKind, figures: dict[str, Any], reports: int, uri: str | None = None) -> ProgressEvent:
        return dataclasses.replace(event_from_metrics(kind, figures, reports, uri), attempt=attempt, time=T)

    log.record(sent("step", {"step": 5, "epoch": 0, "loss": 0.9, "progress": 0.25} | plan, 1))
    log.record_forwarded(sent("step", {"step": 5, "epoch": 0, "loss": 0.9, "progress": 0.25} | plan, 1))
    log.record_forwarded(sent("checkpoint", {"step": 10, "epoch": 1, "loss": 0.5} | plan, 2, URI))
    final = sent("step", {"step": 20, "epoch": 1, "loss": 0.2, "progress": 1.0} | plan, 3)
    log.record(final)
    log.record(dataclasses.replace(final, kind="done"))
    return log


def test_a_user_loops_events_make_the_same_training_report_as_a_builtin_loops() -> None:
    builtin, user = training_report(_builtin_run().snapshot()), training_report(_user_run().snapshot())
    assert user == builtin
    assert user.step == 20 and user.total_steps == 20 and user.done
    assert user.checkpoint is not None and user.checkpoint.path == URI and user.checkpoint.step == 10


def test_a_loop_that_reports_to_ray_train_alone_still_gets_its_steps_metrics_and_checkpoints() -> None:
    log = ProgressLog()
    log.record_forwarded(event_from_metrics("step", {"loss": 0.7, "note": "text", "converged": True}, 1))
    log.record_forwarded(event_from_metrics("checkpoint", {"loss": 0.4}, 2, URI))
    report = training_report(log.snapshot())
    assert report.step == 2, "without a step metric, the step is the number of reports"
    assert report.metrics == {"loss": 0.4}
    assert report.checkpoint is not None and report.checkpoint.path == URI


def test_a_late_forwarded_checkpoint_is_kept_without_moving_the_line_back() -> None:
    log = ProgressLog()
    log.begin_attempt(0)
    log.record(event_from_metrics("step", {"step": 12, "total_steps": 20}, 12))
    log.record_forwarded(event_from_metrics("checkpoint", {"step": 10, "total_steps": 20}, 1, URI))
    snapshot = log.snapshot()
    assert snapshot.latest is not None and snapshot.latest.step == 12
    assert [event.step for event in snapshot.checkpoints] == [10]


def test_the_line_shows_only_the_plan_a_user_loop_gave() -> None:
    log = ProgressLog()
    log.record_forwarded(event_from_metrics("step", {"step": 7, "loss": 0.5}, 7))
    line = progress_line(log.snapshot())
    assert line.startswith("step 7  loss 0.5000"), line


def test_checkpoints_ray_train_does_not_keep_are_the_ones_removed() -> None:
    run = "bucket/runs/job/ray/job"
    listed = [f"{run}/checkpoint_1", f"{run}/checkpoint_2", f"{run}/checkpoint_3", f"{run}/logs"]
    assert unkept(listed, [f"{run}/checkpoint_3/", f"{run}/checkpoint_1"]) == [f"{run}/checkpoint_2"]


def test_ctrl_c_names_a_user_loops_last_checkpoint_as_it_reported_it(tmp_path: Path) -> None:
    spec = BigModelJobSpec.model_validate({"workload": {"entrypoint": {"function": "loop:train"}}}, by_alias=True)
    latest = latest_checkpoint(spec, str(tmp_path), _user_run().snapshot())
    assert latest is not None and (latest.uri, latest.step, latest.epoch) == (URI, 10, 1)
    assert latest_checkpoint(spec, str(tmp_path), None) is None, "interrupted before the first progress"
