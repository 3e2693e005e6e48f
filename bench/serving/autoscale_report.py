"""The report printed at the end of `python -m bench.serve_autoscale`: a line per policy and how much sooner the
token policy ran a second replica than Serve's default did."""

from __future__ import annotations

import math
from typing import Any

from bench.serving.autoscale_runs import REQUESTS, TOKENS

TITLES = {
    TOKENS: "tokens (the product: requests or tokens yet to generate)",
    REQUESTS: "requests (Serve's default: requests in flight)",
}


def _seconds(value: float | None) -> str:
    return f"{value:8.1f}" if value is not None else f"{'never':>8}"


def _ms(point: dict[str, Any] | None, key: str) -> str:
    value = point.get(key) if point else None
    return f"{value:9.0f}" if isinstance(value, (int, float)) and not math.isnan(value) else f"{'n/a':>9}"


def policy_line(policy: str, result: dict[str, Any]) -> str:
    point = result.get("point")
    answered = f"{point['requests']:4d} {point['errors']:4d}" if point else f"{'n/a':>4} {'n/a':>4}"
    return (
        f"{policy:<9} {_seconds(result['target_s'])} {_seconds(result['running_s'])} {result['most']:5d} "
        f"{result['end']:5d} {answered} {_ms(point, 'ttft_p50_ms')} {_ms(point, 'ttft_p99_ms')}"
    )


def speedup_line(results: dict[str, Any]) -> str:
    """Seconds to a second running replica under Serve's default over those under the token policy."""
    tokens, requests = results.get(TOKENS), results.get(REQUESTS)
    what = "seconds to a 2nd running replica, requests / tokens:"
    if tokens is None or requests is None:
        return f"{what} not measured (both policies must run)"
    if tokens["running_s"] is None:
        return f"{what} not measured (the token policy ran no 2nd replica within its {tokens['burst_s']:.0f} s burst)"
    if requests["running_s"] is None:
        bound = requests["burst_s"] / tokens["running_s"]
        return f"{what} more than {bound:.1f}x (Serve's default ran no 2nd replica within its {requests['burst_s']:.0f} s burst)"
    return f"{what} {requests['running_s'] / tokens['running_s']:.1f}x"


def report(settings: str, results: dict[str, Any]) -> None:
    print()
    print(settings)
    print("seconds from the burst's first request, replicas as the Serve controller counts them, TTFT in ms")
    print(
        f"{'policy':<9} {'target>1':>8} {'2nd runs':>8} {'most':>5} {'end':>5} {'reqs':>4} {'errs':>4} "
        f"{'TTFT p50':>9} {'TTFT p99':>9}"
    )
    for policy, result in results.items():
        print(policy_line(policy, result))
    for policy in results:
        print(f"  {policy}: {TITLES[policy]}")
    print(speedup_line(results))
