"""Canary traffic, as the operator and the Serve proxies' guards speak of it: the share a canary version takes, and
what each version answered through each proxy.

The operator PUTs a TrafficSetting to the guard of the head's proxy (wire.TRAFFIC_PATH) and GETs back a TrafficReport;
the guards of all proxies share both through the cluster's Ray (runtime/serving/traffic_store.py).
"""

from __future__ import annotations

import bisect
import math

from pydantic import BaseModel, ConfigDict, Field

LATENCY_BOUNDS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000)
"""Upper bounds of the latency buckets, in milliseconds; one more bucket holds the slower requests. Counts per bucket
add up across proxies, where percentiles of each proxy would not."""
SERVER_ERROR = 500


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class CanaryShare(_Wire):
    version: str = Field(..., min_length=1, description="The canary's model version.")
    percent: int = Field(..., ge=0, le=100, description="Percent of the requests the canary takes.")


class TrafficSetting(_Wire):
    """How the proxies split requests: all to the stable version unless a canary takes a share."""

    canary: CanaryShare | None = None


class ArmOutcomes(_Wire):
    """What one version answered: requests, server errors (5xx), and latency to the answer's start, bucketed."""

    requests: int = 0
    errors: int = 0
    latency: list[int] = Field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS_MS) + 1))

    def record(self, status: int, seconds: float) -> None:
        self.requests += 1
        self.errors += status >= SERVER_ERROR
        self.latency[bisect.bisect_left(LATENCY_BOUNDS_MS, seconds * 1000)] += 1

    def plus(self, other: ArmOutcomes) -> ArmOutcomes:
        buckets = len(LATENCY_BOUNDS_MS) + 1
        mine, theirs = (counts + [0] * (buckets - len(counts)) for counts in (self.latency, other.latency))
        return ArmOutcomes(
            requests=self.requests + other.requests,
            errors=self.errors + other.errors,
            latency=[a + b for a, b in zip(mine, theirs, strict=False)][:buckets],
        )

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def percentile_ms(self, fraction: float) -> float | None:
        """The upper bound of the bucket that holds this fraction of the requests (infinity: beyond the last
        bound); None without requests."""
        total = sum(self.latency)
        if total == 0:
            return None
        rank = math.ceil(fraction * total)
        seen = 0
        for index, count in enumerate(self.latency):
            seen += count
            if seen >= rank:
                return float(LATENCY_BOUNDS_MS[index]) if index < len(LATENCY_BOUNDS_MS) else math.inf
        return math.inf


class ProxyReport(_Wire):
    """One proxy's outcomes since it began applying its current canary version."""

    proxy: str = Field(..., description="The proxy's Ray node.")
    at: float = Field(..., description="When it was written, in seconds since the epoch.")
    applies: TrafficSetting = Field(default_factory=TrafficSetting)
    stable: ArmOutcomes = Field(default_factory=ArmOutcomes)
    canary: ArmOutcomes = Field(default_factory=ArmOutcomes)


class TrafficReport(_Wire):
    """What the guard of the head's proxy answers: the setting in force and every proxy's report."""

    setting: TrafficSetting = Field(default_factory=TrafficSetting)
    proxies: list[ProxyReport] = Field(default_factory=list)

    def outcomes(self, version: str) -> tuple[ArmOutcomes, ArmOutcomes]:
        """Stable and canary outcomes summed over the proxies that were applying a canary of `version`."""
        stable, canary = ArmOutcomes(), ArmOutcomes()
        for report in self.proxies:
            if report.applies.canary is not None and report.applies.canary.version == version:
                stable, canary = stable.plus(report.stable), canary.plus(report.canary)
        return stable, canary

    def lagging(self, setting: TrafficSetting, fresh_s: float) -> list[str]:
        """The live proxies that do not apply `setting` yet: live, those that reported within fresh_s of the newest
        report (the proxies' clocks, not the reader's, say how old a report is)."""
        newest = max((r.at for r in self.proxies), default=0.0)
        return [r.proxy for r in self.proxies if newest - r.at <= fresh_s and r.applies != setting]
