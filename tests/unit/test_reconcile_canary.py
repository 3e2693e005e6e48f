"""A new model version as a canary (spec.rollout.canaryPercent), pass by pass: started beside the serving version,
given its share once it runs, judged on its answers against the serving version's, then rolled back or promoted,
and removed only once no proxy sends it requests."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

from bigmodel.api.service import BigModelServiceStatus, Rollout
from bigmodel.api.traffic import ArmOutcomes, CanaryShare, ProxyReport, TrafficReport, TrafficSetting
from bigmodel.api.wire import CANARY_APP_SUFFIX, CANARY_ROUTE_PREFIX
from bigmodel.reconcile.plans import DeployServe, Outcome, SetTraffic
from bigmodel.reconcile.service import decide_service
from bigmodel.reconcile.service_canary import judge
from bigmodel.reconcile.service_observed import ModelSourceView, RayClusterView, ServeAppView
from bigmodel.reconcile.service_pass import ServicePlan
from tests.unit.test_reconcile_service import NOW, SOURCE, make_service, nodes, seen, serving_at_ready

RETRAINED = ModelSourceView(uri=SOURCE.uri, revision="uid:2")
ROLLOUT = {"canaryPercent": 25, "minRequests": 10, "analysisSeconds": 60}


def outcomes(requests: int, errors: int = 0, ms: float = 8) -> ArmOutcomes:
    arm = ArmOutcomes()
    for index in range(requests):
        arm.record(500 if index < errors else 200, ms / 1000)
    return arm


def report(setting: TrafficSetting, *proxies: ProxyReport) -> TrafficReport:
    return TrafficReport(setting=setting, proxies=list(proxies))


def proxy(
    name: str, applies: TrafficSetting, stable: ArmOutcomes, canary: ArmOutcomes, at: float = 1000.0
) -> ProxyReport:
    return ProxyReport(proxy=name, at=at, applies=applies, stable=stable, canary=canary)


@dataclass
class World:
    """The serving cluster as the passes see it: its pods, its Serve applications, its proxies' traffic report."""

    pods: list[Any]
    status: BigModelServiceStatus
    spec: dict[str, Any] = field(default_factory=lambda: {"rollout": ROLLOUT})
    apps: dict[str, ServeAppView] = field(default_factory=dict)
    traffic: TrafficReport | None = None
    now: Any = NOW

    def step(self, source: ModelSourceView = RETRAINED) -> ServicePlan:
        ray = RayClusterView(
            True, self.apps.get("digits"), nodes(self.pods), canary=self.apps.get("digits" + CANARY_APP_SUFFIX)
        )
        observation = replace(seen(self.pods, {0: ray}, source=source, now=self.now), traffic=self.traffic)
        plan = decide_service(make_service(self.status, **self.spec), observation)
        self.status = plan.status
        return plan

    def run_deployed(self, plan: ServicePlan) -> None:
        """Serve runs what the plan deployed."""
        for action in plan.ray_calls(DeployServe):
            self.apps = {
                application["name"]: ServeAppView("RUNNING", deployed=application, replica_states=("RUNNING",))
                for application in action.config["applications"]
            }


def reasons(plan: ServicePlan) -> list[str]:
    return [event.reason for event in plan.events]


def canary_running() -> tuple[World, str]:
    """A canary of the retrained model deployed beside the serving version, its application running, its share
    set: where every verdict starts. Returns the world and the canary's version."""
    pods, config, ray, status = serving_at_ready()
    world = World(pods, status, apps={"digits": ray[0].app})  # type: ignore[dict-item]
    plan = world.step()
    assert "CanaryStarted" in reasons(plan)
    assert world.status.canary is not None and world.status.canary.phase == "Deploying"
    (deploy,) = plan.ray_calls(DeployServe)
    stable, canary = deploy.config["applications"]
    assert stable["args"] == config["applications"][0]["args"], "the serving version keeps its application"
    assert canary["name"] == "digits" + CANARY_APP_SUFFIX and canary["route_prefix"] == CANARY_ROUTE_PREFIX
    assert canary["args"]["model_version"] != stable["args"]["model_version"]
    assert plan.ray_calls(SetTraffic) == [], "no requests go to a canary before it runs"
    assert world.status.phase == "Upgrading" and world.status.traffic == f"{status.model.version} 100%"

    world.run_deployed(plan)
    world.traffic = report(TrafficSetting())
    plan = world.step()
    version = canary["args"]["model_version"]
    share = TrafficSetting(canary=CanaryShare(version=version, percent=25))
    assert plan.ray_calls(SetTraffic) == [SetTraffic(world.pods[0].ray_head, share)]
    assert world.status.canary is not None and world.status.canary.phase == "Analyzing"
    assert world.status.traffic == f"{status.model.version} 75%, {version} 25%"
    assert [v.percent for v in world.status.versions] == [75, 25]
    world.traffic = report(share)
    return world, version


def test_a_canary_that_answers_errors_is_rolled_back_and_removed_once_no_proxy_sends_it_requests() -> None:
    world, version = canary_running()
    served = world.status.model.version
    share = world.traffic.setting if world.traffic else TrafficSetting()
    world.traffic = report(
        share,
        proxy("head", share, outcomes(30), outcomes(6, errors=6)),
        proxy("worker", share, outcomes(30), outcomes(6, errors=0)),
    )
    plan = world.step()
    assert "CanaryRolledBack" in reasons(plan) and plan.outcomes[Outcome.CANARY_ROLLED_BACK] == 1
    event = next(e for e in plan.events if e.reason == "CanaryRolledBack")
    assert (
        "6 of its 12 answers were server errors (50.0%)" in event.message and f"{served} keeps serving" in event.message
    )
    assert plan.ray_calls(SetTraffic) == [SetTraffic(world.pods[0].ray_head, TrafficSetting())]
    assert world.status.rolled_back_version == version and world.status.model.version == served
    condition = next(c for c in world.status.conditions if c.type == "UpgradeInProgress")
    assert (condition.status, condition.reason) == ("False", "CanaryRolledBack")
    assert plan.ray_calls(DeployServe) == [], "the canary's application stays while proxies may still send it requests"

    off = TrafficSetting()
    world.traffic = report(
        off, proxy("head", off, outcomes(0), outcomes(0)), proxy("worker", share, outcomes(30), outcomes(6))
    )
    plan = world.step()
    assert world.status.canary is not None and plan.ray_calls(DeployServe) == [], "a proxy still sends it requests"

    stale = proxy("gone", share, outcomes(1), outcomes(1), at=1000.0 - 60)
    world.traffic = report(
        off, proxy("head", off, outcomes(0), outcomes(0)), proxy("worker", off, outcomes(0), outcomes(0)), stale
    )
    plan = world.step()
    assert world.status.canary is None
    (deploy,) = plan.ray_calls(DeployServe)
    assert [a["name"] for a in deploy.config["applications"]] == ["digits"]
    assert deploy.config["applications"][0]["args"]["model_version"] == served

    world.run_deployed(plan)
    world.traffic = None
    plan = world.step()
    assert world.status.canary is None and plan.ray_calls(DeployServe) == [], "a rolled-back version is not tried again"
    assert world.status.phase == "Ready" and f"{version} was rolled back" in (world.status.message or "")
    assert world.status.traffic == f"{served} 100%"


def test_a_good_canary_is_promoted_after_the_analysis_and_the_service_rolls_to_it() -> None:
    world, version = canary_running()
    share = world.traffic.setting if world.traffic else TrafficSetting()
    world.traffic = report(share, proxy("head", share, outcomes(40), outcomes(12)))
    world.now = NOW + timedelta(seconds=30)
    plan = world.step()
    assert world.status.canary is not None and world.status.canary.phase == "Analyzing" and plan.requeue_after
    assert world.status.canary.canary.requests == 12 and world.status.canary.stable.requests == 40

    world.now = NOW + timedelta(seconds=61)
    plan = world.step()
    assert "CanaryPromoted" in reasons(plan) and plan.outcomes[Outcome.CANARY_PROMOTED] == 1
    (deploy,) = plan.ray_calls(DeployServe)
    assert [a["args"]["model_version"] for a in deploy.config["applications"]] == [version, version]
    assert plan.ray_calls(SetTraffic) == [], "the canary keeps its share while the service rolls"

    world.run_deployed(plan)
    plan = world.step()
    assert world.status.model.version == version
    assert plan.ray_calls(SetTraffic) == [SetTraffic(world.pods[0].ray_head, TrafficSetting())]
    off = TrafficSetting()
    world.traffic = report(off, proxy("head", off, outcomes(0), outcomes(0)))
    plan = world.step()
    assert world.status.canary is None and world.status.traffic == f"{version} 100%"
    (deploy,) = plan.ray_calls(DeployServe)
    assert [a["name"] for a in deploy.config["applications"]] == ["digits"]


def test_a_new_spec_cancels_the_canary_and_a_canary_that_does_not_deploy_is_rolled_back() -> None:
    world, version = canary_running()
    newer = ModelSourceView(uri=SOURCE.uri, revision="uid:3")
    plan = world.step(newer)
    assert "CanaryCancelled" in reasons(plan) and world.status.rolled_back_version is None

    world, version = canary_running()
    world.apps["digits" + CANARY_APP_SUFFIX] = ServeAppView("DEPLOY_FAILED", "replica constructor failed")
    plan = world.step()
    assert "CanaryRolledBack" in reasons(plan) and "DEPLOY_FAILED" in (world.status.canary.reason or "")  # type: ignore[union-attr]


def test_proxies_that_never_report_roll_the_canary_back_and_a_decided_one_goes_without_their_word() -> None:
    world, version = canary_running()
    world.traffic = None
    world.now = NOW + timedelta(seconds=60)
    plan = world.step()
    assert world.status.canary is not None and world.status.canary.phase == "Analyzing", "a short silence is waited out"
    world.now = NOW + timedelta(seconds=121)
    plan = world.step()
    assert "CanaryRolledBack" in reasons(plan) and "did not report" in (world.status.canary.reason or "")  # type: ignore[union-attr]
    world.now = NOW + timedelta(seconds=200)
    world.step()
    assert world.status.canary is not None, "the proxies' word is waited for a while"
    world.now = NOW + timedelta(seconds=300)
    plan = world.step()
    assert world.status.canary is None and world.status.rolled_back_version == version
    (deploy,) = plan.ray_calls(DeployServe)
    assert [a["name"] for a in deploy.config["applications"]] == ["digits"]


def test_without_canary_percent_a_new_version_rolls_in_place() -> None:
    pods, _, ray, status = serving_at_ready()
    world = World(pods, status, spec={}, apps={"digits": ray[0].app})  # type: ignore[dict-item]
    plan = world.step()
    assert world.status.canary is None and "CanaryStarted" not in reasons(plan)
    (deploy,) = plan.ray_calls(DeployServe)
    assert len(deploy.config["applications"]) == 1


def test_the_verdict_needs_enough_requests_and_weighs_errors_and_latency() -> None:
    rollout = Rollout(canary_percent=10, min_requests=10, analysis_seconds=60, max_latency_ratio=1.5)
    assert judge(rollout, outcomes(100), outcomes(9, errors=9), 600)[0] == "wait", "too few requests to judge"
    assert judge(rollout, outcomes(100, errors=5), outcomes(20, errors=1), 10)[0] == "wait", "no worse than stable"
    assert judge(rollout, outcomes(100, errors=0), outcomes(20, errors=1), 10)[0] == "rollback"
    assert judge(rollout, outcomes(100, ms=8), outcomes(20, ms=18), 10)[0] == "wait", "within the noise floor"
    verdict, why = judge(rollout, outcomes(100, ms=40), outcomes(20, ms=400), 10)
    assert verdict == "rollback" and "p99 latency is <= 500 ms, against <= 50 ms" in why
    assert judge(rollout, outcomes(100), outcomes(20), 60)[0] == "promote"
