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
from typing import Any

from bench import bench_parser

REQUEST_TIMEOUT_S = 60.0
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


async def _send(session: Any, url: str, body: bytes) -> bool:
    import aiohttp

    try:
        async with session.post(url, data=body, headers=JSON_HEADERS) as response:
            await response.read()
            return response.status == 200
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return False


async def _closed_loop(session: Any, spec: dict[str, Any], concurrency: int) -> dict[str, Any]:
    """N clients for warmup + duration; requests answered inside the measured window count."""
    url, body = spec["url"], spec["body"].encode()
    measure_from, stop_at = _measured_window(spec, time.perf_counter())
    latencies: list[float] = []
    errors = 0

    async def client() -> None:
        nonlocal errors
        while (start := time.perf_counter()) < stop_at:
            ok = await _send(session, url, body)
            end = time.perf_counter()
            if measure_from <= end <= stop_at:
                if ok:
                    latencies.append(end - start)
                else:
                    errors += 1

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return summary(latencies, errors, spec["duration"], concurrency=concurrency)


async def _open_loop(session: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """Requests sent at a fixed rate whatever the answers; latency runs from each request's scheduled time."""
    url, body, rate = spec["url"], spec["body"].encode(), spec["rate"]
    begin = time.perf_counter() + 0.05
    measure_from, stop_at = _measured_window(spec, begin)
    latencies: list[float] = []
    errors = dropped = 0
    pending: set[asyncio.Task[None]] = set()

    async def one(due: float) -> None:
        nonlocal errors
        ok = await _send(session, url, body)
        if due >= measure_from:
            if ok:
                latencies.append(time.perf_counter() - due)
            else:
                errors += 1

    index = 0
    while (due := begin + index / rate) < stop_at:
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(pending) < spec["max_in_flight"]:
            task = asyncio.create_task(one(due))
            pending.add(task)
            task.add_done_callback(pending.discard)
        elif due >= measure_from:
            dropped += 1
        index += 1
    if pending:
        await asyncio.wait(pending, timeout=REQUEST_TIMEOUT_S)
    # Requests are counted by their scheduled time, so achieved/offered shows whether the server kept up.
    achieved = len(latencies) / spec["duration"]
    return summary(latencies, errors + dropped, spec["duration"], rate=rate, achieved=achieved, dropped=dropped)


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
