"""A new model version on trial (spec.rollout.canaryPercent): which versions the serving cluster runs, the canary's
share of the requests, and the verdict on its answers.

A canary goes Deploying (its own Serve application, beside the serving one) -> Analyzing (the proxies send it its
share; both versions' answers are compared) -> Promoting (the serving application rolls to it) or straight to
Removing (rolled back or cancelled: the proxies stop sending it requests, then its application goes). The old version
serves throughout; the status says where the canary is, and Events say what was decided and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bigmodel.api.service import Canary, CanaryArm, CanaryResult, Rollout, ServedModel, VersionTraffic
from bigmodel.api.traffic import ArmOutcomes, CanaryShare, TrafficSetting
from bigmodel.reconcile.plans import Outcome, SetTraffic
from bigmodel.reconcile.service_observed import FAILED_APP_STATES, ServeAppView
from bigmodel.reconcile.service_pass import ServicePass

CANARY_START_TIMEOUT_S = 15 * 60.0
"""How long a canary's application may take to run before it is rolled back (as long as a new cluster may take)."""
LATENCY_NOISE_MS = 20.0
"""A canary's p99 within this of the serving version's is never held against it: the request path's own noise."""
FRESH_S = 10.0
"""A proxy that reported within this of the newest report is live: it must have stopped sending the canary requests
before the canary's application goes. One that has not reported for longer is gone (its pod with it)."""
SILENT_PROXIES_S = 120.0
"""How long the head's proxy may not answer for the traffic (a runtime image older than canaries, a proxy that cannot
start) before a canary is rolled back unjudged, or a decided one's application removed without the proxies' word."""

Verdict = Literal["wait", "promote", "rollback"]


@dataclass(frozen=True)
class Versions:
    """The model the service's application serves and, during a canary, the canary application's."""

    stable: ServedModel
    canary: ServedModel | None = None


def judge(rollout: Rollout, stable: ArmOutcomes, canary: ArmOutcomes, elapsed_s: float) -> tuple[Verdict, str]:
    """The verdict on a canary's answers so far, and why. Nothing is judged before it has answered minRequests."""
    if canary.requests < rollout.min_requests:
        return "wait", f"{canary.requests} of the {rollout.min_requests} requests to judge it on"
    canary_rate, stable_rate = canary.error_rate, stable.error_rate
    if canary_rate > stable_rate + rollout.max_error_rate_increase:
        return "rollback", (
            f"{canary.errors} of its {canary.requests} answers were server errors ({canary_rate:.1%}), against "
            f"{stable_rate:.1%} of the serving version's"
        )
    canary_p99, stable_p99 = canary.percentile_ms(0.99), stable.percentile_ms(0.99)
    if stable.requests >= rollout.min_requests and canary_p99 is not None and stable_p99 is not None:
        if canary_p99 > max(stable_p99 * rollout.max_latency_ratio, stable_p99 + LATENCY_NOISE_MS):
            return "rollback", (
                f"its p99 latency is {shown_ms(canary_p99)}, against {shown_ms(stable_p99)} of the serving version "
                f"(spec.rollout.maxLatencyRatio {rollout.max_latency_ratio:g})"
            )
    if elapsed_s >= rollout.analysis_seconds:
        return "promote", (
            f"{canary.requests} answers in {elapsed_s:.0f} s, {canary.errors} server errors ({canary_rate:.1%} "
            f"against {stable_rate:.1%}), p99 {shown_ms(canary_p99)} against {shown_ms(stable_p99)}"
        )
    return "wait", f"judged again until {rollout.analysis_seconds} s have passed"


def shown_ms(value: float | None) -> str:
    if value is None:
        return "unknown"
    return f"<= {value:g} ms" if value != float("inf") else "> 60 s"


def arm(outcomes: ArmOutcomes) -> CanaryArm:
    p99 = outcomes.percentile_ms(0.99)
    return CanaryArm(requests=outcomes.requests, errors=outcomes.errors, p99=shown_ms(p99) if p99 is not None else None)


def versions_of(d: ServicePass) -> Versions:
    canary = d.status.canary
    if canary is None:
        return Versions(d.status.model)
    trial = ServedModel(source=canary.source, version=canary.version)
    return Versions(trial if canary.phase == "Promoting" else d.status.model, trial)


def follow_canary(d: ServicePass, desired: ServedModel, generation: int) -> Versions:
    """Start, follow or end the canary of `desired` on the serving cluster; the versions its applications serve."""
    status = d.status
    served = status.model if status.model.version else None
    if status.canary is None:
        percent = d.spec.rollout.canary_percent
        if served is None or desired.version == served.version or percent is None or d.pending is not None:
            return Versions(desired)
        if desired.version == status.rolled_back_version:
            return Versions(served)
        status.canary = Canary(
            version=desired.version or "",
            source=desired.source or "",
            percent=percent,
            phase="Deploying",
            started=d.now,
        )
        d.event(
            "Normal",
            "CanaryStarted",
            f"version {desired.version} ({desired.source}) starts beside version {served.version}; it takes "
            f"{percent}% of the requests once it runs",
        )
    step(d, status.canary, desired, generation)
    return versions_of(d)


def runs_version(app: ServeAppView | None, version: str) -> bool:
    """Whether a Serve application runs the model version (its replicas were made from a config of it)."""
    return app is not None and app.status == "RUNNING" and app.deployed.get("args", {}).get("model_version") == version


def step(d: ServicePass, canary: Canary, desired: ServedModel, generation: int) -> None:
    """The canary one phase on, or more where nothing needs waiting for; ends asking for the next pass soon."""
    ray = d.seen.cluster(generation)
    app = ray.canary if ray.reachable else None
    if canary.phase in ("Deploying", "Analyzing"):
        ended = ends_early(d, canary, desired)
        if ended is None and app is not None and app.status in FAILED_APP_STATES:
            ended = ("RolledBack", f"its application is {app.status}: {app.message}")
        if ended is not None:
            conclude(d, canary, *ended)
    if canary.phase == "Deploying":
        if runs_version(app, canary.version):
            canary.phase, canary.analysis_started = "Analyzing", d.now
        elif (d.now - canary.started).total_seconds() > CANARY_START_TIMEOUT_S:
            conclude(d, canary, "RolledBack", f"its application was not running within {CANARY_START_TIMEOUT_S:.0f} s")
        else:
            d.busy = True
            return
    if canary.phase == "Analyzing":
        analyze(d, canary)
    if canary.phase == "Promoting":
        promote(d, canary, generation)
    if canary.phase == "Removing":
        remove(d, canary, generation)
    elif d.status.canary is not None:
        share(d, generation, TrafficSetting(canary=CanaryShare(version=canary.version, percent=canary.percent)))
    d.busy = True


def ends_early(d: ServicePass, canary: Canary, desired: ServedModel) -> tuple[CanaryResult, str] | None:
    """What ends a canary before its verdict: the spec moving on."""
    if desired.version != canary.version:
        return "Cancelled", f"spec.model now names version {desired.version}"
    if d.spec.rollout.canary_percent is None:
        return "Promoted", "spec.rollout.canaryPercent was removed"
    if d.pending is not None:
        return "Cancelled", "the service is moving to a new cluster (its shape changed)"
    return None


def analyze(d: ServicePass, canary: Canary) -> None:
    report, started = d.seen.traffic, canary.analysis_started
    if report is None or started is None:
        heard = canary.reported or started
        if heard is None or (d.now - heard).total_seconds() > SILENT_PROXIES_S:
            conclude(
                d, canary, "RolledBack", f"the Serve proxies did not report its answers for {SILENT_PROXIES_S:.0f} s"
            )
        return
    canary.reported = d.now
    stable, trial = report.outcomes(canary.version)
    canary.stable, canary.canary = arm(stable), arm(trial)
    verdict, why = judge(d.spec.rollout, stable, trial, (d.now - started).total_seconds())
    if verdict == "rollback":
        conclude(d, canary, "RolledBack", why)
    elif verdict == "promote":
        conclude(d, canary, "Promoted", why)


def conclude(d: ServicePass, canary: Canary, result: CanaryResult, why: str) -> None:
    canary.result, canary.reason, canary.decided = result, why, d.now
    served = d.status.model.version
    if result == "Promoted":
        canary.phase = "Promoting"
        d.event("Normal", "CanaryPromoted", f"version {canary.version} is promoted: {why}; the service rolls to it")
        d.count(Outcome.CANARY_PROMOTED)
        return
    canary.phase = "Removing"
    if result == "RolledBack":
        d.status.rolled_back_version = canary.version
        d.event(
            "Warning",
            "CanaryRolledBack",
            f"version {canary.version} is rolled back: {why}; version {served} keeps serving",
        )
        d.condition("UpgradeInProgress", False, "CanaryRolledBack", f"version {canary.version}: {why}")
        d.count(Outcome.CANARY_ROLLED_BACK)
    else:
        d.event("Normal", "CanaryCancelled", f"the canary of version {canary.version} is cancelled: {why}")


def promote(d: ServicePass, canary: Canary, generation: int) -> None:
    """The serving application rolls to the canary's version (Serve starts its new replicas before it stops the old
    ones); once it runs it, the canary is removed."""
    ray = d.seen.cluster(generation)
    if runs_version(ray.app if ray.reachable else None, canary.version):
        d.status.model = ServedModel(source=canary.source, version=canary.version)
        d.status.rolled_back_version = None
        canary.phase = "Removing"


def remove(d: ServicePass, canary: Canary, generation: int) -> None:
    """No proxy sends the canary requests any more, then its application goes (with the status's canary)."""
    report = d.seen.traffic
    off = TrafficSetting()
    if report is None:
        if canary.decided is None or (d.now - canary.decided).total_seconds() > SILENT_PROXIES_S:
            d.status.canary = None
        return
    if report.setting != off:
        share(d, generation, off)
    elif not report.lagging(off, FRESH_S):
        d.status.canary = None


def share(d: ServicePass, generation: int, setting: TrafficSetting) -> None:
    """The split the proxies apply, set through the head's proxy where it differs."""
    report, head = d.seen.traffic, d.seen.head(generation)
    if report is not None and report.setting != setting and head is not None:
        d.plan.ray.append(SetTraffic(head.ray_head, setting))


def traffic(d: ServicePass) -> list[VersionTraffic]:
    """The versions serving and their shares of the requests, as the proxies apply them."""
    model, canary = d.status.model, d.status.canary
    taken = canary.percent if canary is not None and canary.phase in ("Analyzing", "Promoting") else 0
    versions = (
        [VersionTraffic(version=model.version, source=model.source, percent=100 - taken)] if model.version else []
    )
    if canary is not None and taken:
        versions.append(VersionTraffic(version=canary.version, source=canary.source, percent=taken))
    return versions
