"""A stand-in for Ray at the operator's one seam to it (bigmodel.controller.ray_client.RayClient).

Integration tests and the scale benchmark have no Ray cluster behind their pods; this keeps what the
operator asked of Ray and lets the test say what Ray answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bigmodel.api.training_report import TrainingReport
from bigmodel.reconcile.observed import RayJobState, RayJobView


@dataclass
class FakeRay:
    submissions: list[dict[str, Any]] = field(default_factory=list)
    stops: list[str] = field(default_factory=list)
    states: dict[str, RayJobState] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)
    reports: dict[str, TrainingReport] = field(default_factory=dict)

    async def submit(self, head_ip: str, submission: dict[str, Any]) -> None:
        self.submissions.append(submission)
        self.states.setdefault(submission["submission_id"], "RUNNING")

    async def job(self, head_ip: str, submission_id: str) -> RayJobView | None:
        state = self.states.get(submission_id)
        return RayJobView(submission_id, state, self.messages.get(submission_id, "")) if state else None

    async def stop(self, head_ip: str, submission_id: str) -> None:
        self.stops.append(submission_id)
        if self.states.get(submission_id) in ("PENDING", "RUNNING"):
            self.states[submission_id] = "STOPPED"

    async def report(self, head_ip: str) -> TrainingReport | None:
        """The report of the newest run that has one: every head answers for the run submitted to it last."""
        return next((self.reports[sid] for sid in reversed(self.submitted_ids()) if sid in self.reports), None)

    async def close(self) -> None:
        """Nothing to release."""

    def submitted_ids(self) -> list[str]:
        return [submission["submission_id"] for submission in self.submissions]

    def fail(self, submission_id: str, message: str) -> None:
        self.states[submission_id] = "FAILED"
        self.messages[submission_id] = message

    def succeed(self, submission_id: str, report: TrainingReport) -> None:
        self.reports[submission_id] = report
        self.states[submission_id] = "SUCCEEDED"
