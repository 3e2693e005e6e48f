"""The baselines Serve is compared with: (a) the in-process limit and (b) a plain HTTP server."""

from __future__ import annotations

import os
import time
from typing import Any

from bench.serving.children import child
from bench.serving.harness import LOOPBACK, MODEL_NAME, START_TIMEOUT_S, Bench, free_port, per_request_ms, wait_ready
from bench.serving.loadgen import summary


def in_process(bench: Bench, predictor: Any, instance: Any) -> list[dict[str, Any]]:
    """(a): N requests outstanding, taken in batches of at most max_batch_size by back-to-back predict() calls."""
    points = []
    batch = bench.args.max_batch_size
    for concurrency in bench.args.concurrency:
        instances = [instance] * concurrency
        predictor.predict(instances[:batch])
        latencies: list[float] = []
        begin, cpu_begin = time.perf_counter(), time.process_time()
        while time.perf_counter() - begin < bench.args.inprocess_duration:
            round_start = time.perf_counter()
            for first in range(0, concurrency, batch):
                chunk = instances[first : first + batch]
                predictor.predict(chunk)
                latencies.extend([time.perf_counter() - round_start] * len(chunk))
        point = summary(latencies, 0, time.perf_counter() - begin, concurrency=concurrency)
        point["server_cpu_ms"] = per_request_ms(time.process_time() - cpu_begin, len(latencies))
        points.append(point)
        bench.say_point("(a) in-proc", point)
    return points


def plain_http(bench: Bench, threads: int) -> list[dict[str, Any]]:
    """(b): the plain server in a child process with threads torch threads, under the closed loop."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    server_args = ("--model-uri", bench.model_uri, "--port", str(port), "--threads", str(threads))
    with child("plain_server", *server_args, env=env) as server:
        wait_ready(f"http://{LOOPBACK}:{port}/v2/health/ready", START_TIMEOUT_S)
        url = f"http://{LOOPBACK}:{port}/v1/models/{MODEL_NAME}:predict"
        bench.check_answer(url)
        return bench.load(url, "(b) plain", [server.process.pid])
