"""The report printed at the end of the serving benchmark: the table, the ratios against the baselines, the goals."""

from __future__ import annotations

import argparse
import os
from typing import Any

# The goals.
BATCHING_GOAL = 3.0
BATCHING_GOAL_AT = 32
TAIL_GOAL = 2.0
SCALE_UP_GOAL_S = 20.0


def load_average() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


def _cell(point: dict[str, Any] | None) -> str:
    if point is None:
        return f"{'-':>24}"
    return f"{point['throughput']:7.1f} {point['p50_ms']:7.1f} {point['p99_ms']:8.1f}"


def _ratio(numerator: float | None, denominator: float | None) -> str:
    if not numerator or not denominator:
        return "   -  "
    return f"{numerator / denominator:6.2f}"


def _cpu_cell(point: dict[str, Any] | None) -> str:
    if point is None or "server_cpu_ms" not in point:
        return f"{'-':>15}"
    if "client_cpu_ms" in point:
        return f"{point['server_cpu_ms']:8.2f} /{point['client_cpu_ms']:5.2f}"
    return f"{point['server_cpu_ms']:8.2f}       "


def report(
    args: argparse.Namespace,
    model_line: str,
    load_before: str,
    series: dict[str, list[dict[str, Any]]],
    serve: dict[str, Any],
) -> None:
    names = {
        "inproc": "(a) in-process",
        "plain": "(b) plain HTTP",
        "batched": f"(c) Serve b={args.max_batch_size}",
        "single": "(d) Serve b=1",
    }
    by_concurrency = {key: {point["concurrency"]: point for point in points} for key, points in series.items()}

    def point(key: str, concurrency: int) -> dict[str, Any] | None:
        return by_concurrency.get(key, {}).get(concurrency)

    def throughput(key: str, concurrency: int) -> float | None:
        found = point(key, concurrency)
        return found["throughput"] if found else None

    print()
    print(model_line)
    print(f"machine: {os.cpu_count()} cores; load average {load_before} at the start, {load_average()} at the end")
    print(
        f"closed loop: {args.duration:g} s per point after {args.warmup:g} s warm-up (in-process: {args.inprocess_duration:g} s); "
        f"one replica with {args.replica_cpus:g} CPU; wait timeout {args.wait_timeout_ms} ms"
    )
    print(f"{'':>5} " + " ".join(f"{names[key]:>24}" for key in names))
    print(f"{'conc':>5} " + " ".join(f"{'req/s  p50 ms   p99 ms':>24}" for _ in names))
    for concurrency in args.concurrency:
        print(f"{concurrency:5d} " + " ".join(_cell(point(key, concurrency)) for key in names))
    print()
    print(
        f"{'conc':>5} {'c/d batching':>13} {'c/b Serve vs plain':>19} {'c/a of the limit':>17} {'b/a plain of limit':>19}"
    )
    for concurrency in args.concurrency:
        c, d = throughput("batched", concurrency), throughput("single", concurrency)
        a, b = throughput("inproc", concurrency), throughput("plain", concurrency)
        print(f"{concurrency:5d} {_ratio(c, d):>13} {_ratio(c, b):>19} {_ratio(c, a):>17} {_ratio(b, a):>19}")
    print()
    # Contention-proof: CPU seconds spent per answered request, whoever else shared the cores meanwhile.
    print("CPU ms per answered request: server (a: this process, b: the server process, c/d: Serve proxy + replica)")
    idle = serve.get("idle_cpu")
    at_rest = f"; at rest Serve's proxy + replica use {idle * 1000:.0f} ms CPU per second" if idle is not None else ""
    print(f"and, after the slash, the load generator{at_rest}")
    print(f"{'conc':>5} " + " ".join(f"{names[key]:>15}" for key in names))
    for concurrency in args.concurrency:
        print(f"{concurrency:5d} " + " ".join(_cpu_cell(point(key, concurrency)) for key in names))
    print()

    c32, d32 = throughput("batched", BATCHING_GOAL_AT), throughput("single", BATCHING_GOAL_AT)
    if c32 and d32:
        ratio = c32 / d32
        verdict = "met" if ratio >= BATCHING_GOAL else "NOT met"
        print(
            f"batching goal: >= {BATCHING_GOAL:g}x batch size 1 at concurrency {BATCHING_GOAL_AT}: "
            f"{c32:.1f} / {d32:.1f} req/s = {ratio:.2f}x  -> {verdict}"
        )
        # (d) may fall at high concurrency for reasons other than batching (requests above its max_ongoing_requests
        # wait in the router); against its best point the ratio is what batching alone buys.
        best = max(by_concurrency.get("single", {}).values(), key=lambda found: found["throughput"])
        print(
            f"               against (d) at its best (concurrency {best['concurrency']}, {best['throughput']:.1f} req/s): "
            f"{c32 / best['throughput']:.2f}x"
        )
    else:
        print(
            f"batching goal: >= {BATCHING_GOAL:g}x at concurrency {BATCHING_GOAL_AT}: not measured (not in --concurrency)"
        )

    open_loop = serve.get("open")
    if open_loop:
        ratio = open_loop["p99_ms"] / open_loop["p50_ms"]
        verdict = "met" if ratio <= TAIL_GOAL else "NOT met"
        print(
            f"tail goal:     p99 <= {TAIL_GOAL:g}x p50 at half peak: offered {open_loop['rate']:.1f} req/s "
            f"(peak of (c) {2 * open_loop['rate']:.1f}), achieved {open_loop['achieved']:.1f}; "
            f"p50 {open_loop['p50_ms']:.1f} ms, p99 {open_loop['p99_ms']:.1f} ms = {ratio:.2f}x  -> {verdict}"
            + (f" ({open_loop['errors']} errors/dropped)" if open_loop["errors"] else "")
        )

    scale = serve.get("scale")
    if scale:
        config = scale["config"]
        target_s, running_s = scale["target_s"], scale["running_s"]

        def seconds(value: float | None) -> str:
            return f"{value:.1f} s" if value is not None else f"not within {args.autoscale_timeout:g} s"

        verdict = "met" if target_s is not None and target_s <= SCALE_UP_GOAL_S else "NOT met"
        print(
            f"scale-up goal: reacts within {SCALE_UP_GOAL_S:g} s (min 1, max 2, target_ongoing_requests "
            f"{config['target_ongoing_requests']:g}, upscale_delay_s {config['upscale_delay_s']:g}, "
            f"{args.autoscale_concurrency} clients): target > 1 after {seconds(target_s)}, "
            f"2nd replica RUNNING after {seconds(running_s)}  -> {verdict}"
        )
