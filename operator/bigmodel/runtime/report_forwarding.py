"""What a user loop reports to Ray Train, forwarded to the run's progress actor.

A user loop that calls `ray.train.report` alone tells only Ray Train. Ray Train's controller hears every report (rank
0's metrics and the checkpoint as it stored it) and calls a `UserCallback` with it; this one turns the report into a
ProgressEvent for the recorder, so that the summary and the job's status see the loop's last step, metrics and
checkpoint whether or not it uses `bigmodel.runtime.user_loop.report`.
"""

from __future__ import annotations

from typing import Any

from ray.actor import ActorHandle
from ray.train import Checkpoint, UserCallback

from bigmodel.runtime.progress import EventKind, event_from_metrics


class ReportForwarder(UserCallback):
    """Runs in Ray Train's controller, which outlives worker-group restarts: the count of reports spans them."""

    def __init__(self, recorder: ActorHandle, storage: str) -> None:
        self._recorder = recorder
        # A checkpoint's path is within its filesystem (`bucket/key` on an object store): the URI needs the scheme back.
        self._scheme = storage.split("://")[0] + "://" if "://" in storage else ""
        self._reports = 0

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Checkpoint | None) -> None:
        self._reports += 1
        kind: EventKind = "checkpoint" if checkpoint is not None else "step"
        uri = self._scheme + checkpoint.path if checkpoint is not None else None
        self._recorder.record_forwarded.remote(event_from_metrics(kind, metrics[0], self._reports, uri))
