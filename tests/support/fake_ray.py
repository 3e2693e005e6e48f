"""A stand-in for Ray at the operator's one seam to it (bigmodel.controller.ray_client.RayClient).

Integration tests and the scale benchmark have no Ray cluster behind their pods; this keeps what the
operator asked of Ray and lets the test say what Ray answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from bigmodel.api.traffic import ArmOutcomes, ProxyReport, TrafficReport, TrafficSetting
from bigmodel.api.training_report import TrainingReport
from bigmodel.reconcile.job_observed import RayJobState, RayJobView
from bigmodel.reconcile.observed import RayHead
from bigmodel.reconcile.service_observed import RayClusterView, ServeAppView


@dataclass
class FakeRay:
    submissions: list[dict[str, Any]] = field(default_factory=list)
    stops: list[str] = field(default_factory=list)
    states: dict[str, RayJobState] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)
    reports: dict[str, TrainingReport] = field(default_factory=dict)
    deploys: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    apps: dict[str, ServeAppView] = field(default_factory=dict)
    """The Serve application each head (by pod IP) reports."""
    nodes: dict[str, frozenset[str]] = field(default_factory=dict)
    """The Ray nodes (pod names) each head reports alive."""
    busy: dict[str, frozenset[str]] = field(default_factory=dict)
    """The nodes where replicas hold CPUs, per head; by default every alive node."""
    unplaced: dict[str, int] = field(default_factory=dict)
    """One-CPU replicas each head's scheduler cannot place."""
    called: set[str] = field(default_factory=set)
    """Every head IP the operator sent a job call to."""
    deploy_outcome: str = "RUNNING"
    """The status a newly deployed application reports; DEPLOY_FAILED plays a model that does not load."""
    canaries: dict[str, ServeAppView] = field(default_factory=dict)
    """The canary application each head reports, while its config has one."""
    traffic_settings: dict[str, TrafficSetting] = field(default_factory=dict)
    """The canary split each head's proxies apply (all of them at once, here)."""
    outcomes: dict[str, tuple[ArmOutcomes, ArmOutcomes]] = field(default_factory=dict)
    """What the serving and the canary version answered through each head's one proxy, while a canary takes a
    share."""

    async def submit(self, head: RayHead, submission: dict[str, Any]) -> None:
        self.called.add(head.ip)
        self.submissions.append(submission)
        self.states.setdefault(submission["submission_id"], "RUNNING")

    async def job(self, head: RayHead, submission_id: str) -> RayJobView | None:
        self.called.add(head.ip)
        state = self.states.get(submission_id)
        return RayJobView(submission_id, state, self.messages.get(submission_id, "")) if state else None

    async def stop(self, head: RayHead, submission_id: str) -> None:
        self.stops.append(submission_id)
        if self.states.get(submission_id) in ("PENDING", "RUNNING"):
            self.states[submission_id] = "STOPPED"

    async def report(self, head: RayHead) -> TrainingReport | None:
        """The report of the newest run that has one: every head answers for the run submitted to it last."""
        return next((self.reports[sid] for sid in reversed(self.submitted_ids()) if sid in self.reports), None)

    async def deploy_serve(self, head: RayHead, config: dict[str, Any]) -> None:
        """Serve takes the config at once and reports one replica in the outcome's state."""
        head_ip = head.ip
        self.deploys.append((head_ip, config))
        state = "RUNNING" if self.deploy_outcome == "RUNNING" else "STARTING"
        message = "replica constructor failed" if self.deploy_outcome == "DEPLOY_FAILED" else ""
        stable, *canary = (
            ServeAppView(self.deploy_outcome, message, application, target_replicas=1, replica_states=(state,))
            for application in config["applications"]
        )
        self.apps[head_ip] = stable
        if canary:
            self.canaries[head_ip] = canary[0]
        else:
            self.canaries.pop(head_ip, None)

    async def serve_state(self, head: RayHead, app_name: str) -> RayClusterView:
        head_ip = head.ip
        nodes = self.nodes.get(head_ip, frozenset())
        demand = (((("CPU", 1.0),), self.unplaced[head_ip]),) if self.unplaced.get(head_ip) else ()
        view = RayClusterView(True, self.apps.get(head_ip), nodes, self.busy.get(head_ip, nodes), demand)
        return replace(view, canary=self.canaries.get(head_ip))

    async def traffic(self, head: RayHead) -> TrafficReport:
        setting = self.traffic_settings.get(head.ip, TrafficSetting())
        report = ProxyReport(proxy=f"{head.ip}/1", at=0.0, applies=setting)
        if setting.canary is not None and head.ip in self.outcomes:
            report.stable, report.canary = self.outcomes[head.ip]
        return TrafficReport(setting=setting, proxies=[report])

    async def set_traffic(self, head: RayHead, setting: TrafficSetting) -> None:
        self.traffic_settings[head.ip] = setting

    def set_replicas(self, head_ip: str, running: int, unplaced: int = 0) -> None:
        """What Serve's autoscaler did: `running` replicas run, `unplaced` more wait for room."""
        app = self.apps[head_ip]
        states = ("RUNNING",) * running + ("STARTING",) * unplaced
        self.apps[head_ip] = ServeAppView(app.status, app.message, app.deployed, running + unplaced, states)
        self.unplaced[head_ip] = unplaced

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
