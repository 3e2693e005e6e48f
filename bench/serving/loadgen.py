"""The load generator, a process of its own so that it shares no event loop with a server.

    python -m bench.serving.loadgen SPEC_JSON

It prints JSON records, one a line: `started`, `measuring` at the start of each measured window, a `point` per
load point, and `done`.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench import bench_parser

REQUEST_TIMEOUT_S = 60.0
OK = 200
JSON_HEADERS = {"Content-Type": "application/json"}


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks; NaN when there is nothing to rank."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(latencies: list[float], errors: int, seconds: float, **extra: Any) -> dict[str, Any]:
    return {
        "requests": len(latencies),
        "errors": errors,
        "throughput": len(latencies) / seconds,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        **extra,
    }


def _emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def _measured_window(spec: dict[str, Any], begin: float) -> tuple[float, float]:
    """(measure_from, stop_at) after warm-up from begin; the parent samples the servers' CPU time at the mark this
    schedules and again at the point's record."""
    measure_from = begin + spec["warmup"]
    asyncio.get_running_loop().call_later(measure_from - time.perf_counter(), _emit, {"event": "measuring"})
    return measure_from, measure_from + spec["duration"]


class Answers:
    """What the server answered in the measured window: a count per status (0: no answer), and how many of those
    that were not 200 told the client when to retry (Retry-After)."""

    def __init__(self) -> None:
        self.statuses: dict[str, int] = {}
        self.retry_after = 0

    def count(self, status: int, retry_after: bool) -> None:
        self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1
        self.retry_after += retry_after and status != OK

    def fields(self) -> dict[str, Any]:
        return {"statuses": self.statuses, "retry_after": self.retry_after}


async def _send(session: Any, url: str, body: bytes) -> tuple[int, bool]:
    """(status, whether the answer had Retry-After); status 0 when no answer came (connection error, timeout)."""
    import aiohttp

    try:
        async with session.post(url, data=body, headers=JSON_HEADERS) as response:
            await response.read()
            return response.status, "Retry-After" in response.headers
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return 0, False


async def _closed_loop(session: Any, spec: dict[str, Any], concurrency: int) -> dict[str, Any]:
    """N clients for warmup + duration; requests answered inside the measured window count."""
    url, body = spec["url"], spec["body"].encode()
    measure_from, stop_at = _measured_window(spec, time.perf_counter())
    latencies: list[float] = []
    errors = 0
    answers = Answers()

    async def client() -> None:
        nonlocal errors
        while (start := time.perf_counter()) < stop_at:
            status, retry_after = await _send(session, url, body)
            end = time.perf_counter()
            if measure_from <= end <= stop_at:
                answers.count(status, retry_after)
                if status == OK:
                    latencies.append(end - start)
                else:
                    errors += 1

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return summary(latencies, errors, spec["duration"], concurrency=concurrency, **answers.fields())


async def fixed_rate(
    begin: float,
    rate: float,
    stop_at: float,
    measure_from: float,
    max_in_flight: int,
    timeout_s: float,
    start: Callable[[int, float], Awaitable[None]],
) -> int:
    """Runs start(index, due) for due = begin + index / rate until stop_at, whatever the answers, with at most
    max_in_flight running; then waits (up to timeout_s) for those running. Returns the requests of the measured
    window that were not sent because max_in_flight were running."""
    pending: set[asyncio.Task[None]] = set()
    dropped = index = 0
    while (due := begin + index / rate) < stop_at:
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(pending) < max_in_flight:
            task = asyncio.create_task(start(index, due))
            pending.add(task)
            task.add_done_callback(pending.discard)
        elif due >= measure_from:
            dropped += 1
        index += 1
    if pending:
        await asyncio.wait(pending, timeout=timeout_s)
    return dropped


async def _open_loop(session: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """Requests sent at a fixed rate whatever the answers; latency runs from each request's scheduled time."""
    url, body, rate = spec["url"], spec["body"].encode(), spec["rate"]
    begin = time.perf_counter() + 0.05
    measure_from, stop_at = _measured_window(spec, begin)
    latencies: list[float] = []
    errors = 0
    answers = Answers()
    lags: list[float] = []

    async def one(due: float) -> None:
        nonlocal errors
        lag = time.perf_counter() - due
        status, retry_after = await _send(session, url, body)
        if due >= measure_from:
            lags.append(lag)
            answers.count(status, retry_after)
            if status == OK:
                latencies.append(time.perf_counter() - due)
            else:
                errors += 1

    dropped = await fixed_rate(
        begin, rate, stop_at, measure_from, spec["max_in_flight"], REQUEST_TIMEOUT_S, lambda index, due: one(due)
    )
    # Requests are counted by their scheduled time, so achieved/offered shows whether the server kept up.
    achieved = len(latencies) / spec["duration"]
    sent = (len(latencies) + errors) / spec["duration"]
    return summary(
        latencies,
        errors + dropped,
        spec["duration"],
        rate=rate,
        achieved=achieved,
        dropped=dropped,
        sent=sent,
        # How late the generator started its requests: latency includes this, so a large lag means the figures are
        # of a generator that could not keep up, not of the server.
        lag_p99_ms=percentile(lags, 0.99) * 1000,
        **answers.fields(),
    )


async def _generate_load(spec: dict[str, Any]) -> None:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        _emit({"event": "started", "time": time.time()})
        if spec["mode"] == "open":
            _emit({"event": "point", **await _open_loop(session, spec)})
        else:
            for concurrency in spec["concurrency"]:
                _emit({"event": "point", **await _closed_loop(session, spec, concurrency)})
    _emit({"event": "done"})


def main() -> None:
    parser = bench_parser("bench.serving.loadgen", __doc__)
    parser.add_argument("spec", help="the load as JSON: url, body, mode (open or closed), warmup, duration, ...")
    asyncio.run(_generate_load(json.loads(parser.parse_args().spec)))


if __name__ == "__main__":
    main()
