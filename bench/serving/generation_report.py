"""The report printed at the end of `python -m bench.serve_generation`: a table per system, the ratios between them,
and the issue's goals."""

from __future__ import annotations

import argparse
import math
import os
from typing import Any

from bench.serving.report import load_average

# The goals.
THROUGHPUT_GOAL = 3.0
THROUGHPUT_GOAL_AT = 32
TAIL_GOAL = 3.0

LABELS = {
    "a": "(a) engine",
    "b": "(b) request-level",
    "c": "(c) continuous",
    "open": "(c) open loop",
}
TITLES = {
    "a": "(a) raw engine in-process (EngineLoop over BuiltinGpt, no HTTP): the limit",
    "b": "(b) request-level batching through Serve (no KV cache; TTFT is the whole latency, since nothing streams)",
    "c": "(c) continuous batching through Serve (the product's app as the operator deploys it; streamed)",
}


def _known(value: Any) -> bool:
    return isinstance(value, (int, float)) and not math.isnan(value)


def _number(value: Any, width: int, digits: int = 1) -> str:
    return f"{value:{width}.{digits}f}" if _known(value) else f"{'n/a':>{width}}"


def _problems(point: dict[str, Any]) -> list[str]:
    """What went wrong at a point: errors (and dropped requests) by kind, streams that came mostly in one chunk."""
    problems = [f"errors {point['errors']} {point.get('error_kinds', {})}"] if point["errors"] else []
    if point.get("bunched"):
        problems.append(f"{point['bunched']} of {point['requests']} came mostly in one chunk")
    return problems


def point_line(point: dict[str, Any]) -> str:
    """A point in one line, as the run goes."""
    cpu = f"  CPU {point['server_cpu_ms']:.1f} ms/req" if _known(point.get("server_cpu_ms")) else ""
    errors = "".join(f"  {problem}" for problem in _problems(point))
    return (
        f"{point['tokens_per_s']:8.1f} tok/s {point['requests_per_s']:6.2f} req/s  "
        f"TTFT p50 {_number(point['ttft_p50_ms'], 0)} p99 {_number(point['ttft_p99_ms'], 0)} ms  "
        f"ITL p50 {_number(point['itl_p50_ms'], 0, 2)} p99 {_number(point['itl_p99_ms'], 0, 2)} ms{cpu}{errors}"
    )


def _ratio(numerator: float | None, denominator: float | None) -> str:
    if not numerator or not denominator:
        return f"{'-':>10}"
    return f"{numerator / denominator:9.2f}x"


def _table(key: str, points: list[dict[str, Any]]) -> None:
    print(TITLES[key])
    print(
        f"{'conc':>5} {'tok/s':>9} {'req/s':>7} {'TTFT p50':>9} {'TTFT p99':>9} {'ITL p50':>8} {'ITL p99':>8} "
        f"{'errors':>6} {'CPU ms/req':>15}"
    )
    for point in points:
        cpu = _number(point.get("server_cpu_ms"), 8)
        if _known(point.get("client_cpu_ms")):
            cpu += f" /{point['client_cpu_ms']:5.1f}"
        else:
            cpu += " " * 7
        print(
            f"{point['concurrency']:5d} {point['tokens_per_s']:9.1f} {point['requests_per_s']:7.2f} "
            f"{_number(point['ttft_p50_ms'], 9)} {_number(point['ttft_p99_ms'], 9)} "
            f"{_number(point['itl_p50_ms'], 8, 2)} {_number(point['itl_p99_ms'], 8, 2)} {point['errors']:6d} {cpu}"
        )
    for point in points:
        if point["errors"]:
            print(f"      errors at concurrency {point['concurrency']}: {point.get('error_kinds')}")
    bunched = [point for point in points if point.get("bunched")]
    if bunched:
        counts = ", ".join(f"{point['bunched']} of {point['requests']} at {point['concurrency']}" for point in bunched)
        print(f"      came mostly in one chunk (text held back; counts in TTFT and ITL): {counts}")
    print()


def report(
    args: argparse.Namespace, model_line: str, workload_line: str, load_before: str, results: dict[str, Any]
) -> None:
    by_concurrency = {key: {point["concurrency"]: point for point in results.get(key, [])} for key in ("a", "b", "c")}

    def tokens(key: str, concurrency: int) -> float | None:
        found = by_concurrency[key].get(concurrency)
        return found["tokens_per_s"] if found else None

    print()
    print(model_line)
    print(workload_line)
    print(f"machine: {os.cpu_count()} cores; load average {load_before} at the start, {load_average()} at the end")
    print(
        f"closed loops: {args.duration:g} s per point after {args.warmup:g} s warm-up; one replica with "
        f"{args.replica_cpus:g} CPU; maxBatchSize {args.max_batch_size} (waitTimeoutMs {args.wait_timeout_ms} for (b)); "
        "times in ms; CPU per answered request: (a) this process, (b)/(c) Serve proxy + replica / load generator"
    )
    print()
    for key in ("a", "b", "c"):
        if results.get(key):
            _table(key, results[key])

    print(f"{'conc':>5} {'(c)/(b) tok/s':>14} {'(c)/(a) tok/s':>14} {'(b)/(a) tok/s':>14}")
    for concurrency in args.concurrency:
        a, b, c = tokens("a", concurrency), tokens("b", concurrency), tokens("c", concurrency)
        print(f"{concurrency:5d} {_ratio(c, b):>14} {_ratio(c, a):>14} {_ratio(b, a):>14}")
    print()

    c_goal, b_goal = tokens("c", THROUGHPUT_GOAL_AT), tokens("b", THROUGHPUT_GOAL_AT)
    name = f"(c)/(b) tokens/s at concurrency {THROUGHPUT_GOAL_AT} (goal >= {THROUGHPUT_GOAL:g}x)"
    if c_goal and b_goal:
        ratio = c_goal / b_goal
        verdict = "met" if ratio >= THROUGHPUT_GOAL else "NOT met"
        print(f"{name}: {c_goal:.1f} / {b_goal:.1f} = {ratio:.2f}x  -> {verdict}")
    else:
        print(f"{name}: not measured (needs (b) and (c) at concurrency {THROUGHPUT_GOAL_AT})")

    name = f"(c) TTFT p99/p50 at half peak (goal <= {TAIL_GOAL:g}x)"
    open_loop, peak = results.get("open"), results.get("peak")
    if open_loop and peak and _known(open_loop["ttft_p50_ms"]) and open_loop["ttft_p50_ms"] > 0:
        ratio = open_loop["ttft_p99_ms"] / open_loop["ttft_p50_ms"]
        verdict = "met" if ratio <= TAIL_GOAL else "NOT met"
        errors = "".join(f"; {problem}" for problem in _problems(open_loop))
        print(
            f"{name}: offered {open_loop['rate']:.2f} req/s (half of (c)'s peak {peak['requests_per_s']:.2f} req/s at "
            f"concurrency {peak['concurrency']}), achieved {open_loop['requests_per_s']:.2f} req/s, "
            f"{open_loop['tokens_per_s']:.1f} tok/s; TTFT p50 {open_loop['ttft_p50_ms']:.1f} ms, p99 "
            f"{open_loop['ttft_p99_ms']:.1f} ms = {ratio:.2f}x  -> {verdict}  (ITL p50 "
            f"{_number(open_loop['itl_p50_ms'], 0, 2)}, p99 {_number(open_loop['itl_p99_ms'], 0, 2)} ms; "
            f"generator lag p99 {_number(open_loop.get('lag_p99_ms'), 0)} ms{errors})"
        )
    else:
        print(f"{name}: not measured")
