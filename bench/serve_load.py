"""Serving throughput, latency and scale-up of the Serve application against its baselines, measured in one run.

Four servers of the same exported model answer the same v1 predict request (one instance per request):

  (a) in-process   the Predictor's batched predict() in this process, no HTTP: N requests always outstanding,
                   taken in back-to-back batches of at most --max-batch-size. The limit a server could reach.
  (b) plain HTTP   FastAPI + uvicorn in one process with the same Predictor, one request = one forward. The forward
                   runs in a one-thread executor, as a Serve replica runs its batches, so the event loop keeps
                   reading requests meanwhile.
  (c) Serve b=32   the Serve application exactly as the operator deploys it (builders/serve_app.py, deployed on an
                   embedded Ray by runtime/serving/local.py): one replica, --replica-cpus CPUs, dynamic batching
                   with maxBatchSize --max-batch-size and waitTimeoutMs --wait-timeout-ms.
  (d) Serve b=1    the same application with maxBatchSize 1.

Torch uses floor(--replica-cpus) threads everywhere, as Ray sets OMP_NUM_THREADS in a replica. The load generator is
a separate process (aiohttp), so it shares no event loop with a server: a closed loop of N clients, each sending its
next request when the last is answered, measured for --duration after --warmup. Then, on (c), an open loop at half of
the peak throughput of (c) (fixed arrival rate; latency counted from each request's scheduled time, so a generator
that falls behind cannot hide queueing), and finally a deployment autoscaling from 1 to 2 replicas under load.
Every point also gets the CPU time the server's processes (for Serve: the HTTP proxy and the replica) and the load
generator spent per answered request, which other work on the machine does not inflate the way it inflates latency.

Everything shares this machine's cores with the load generator, Ray's own processes and whatever else runs here, so
the figures are of this machine; the ratios against baselines from the same run are what to compare.

    python bench/serve_load.py                               # digits MLP, hidden size 2048
    python bench/serve_load.py --task gpt                    # small GPT generating --new-tokens bytes per request
    python bench/serve_load.py --duration 5 --concurrency 1,8,32 --no-autoscale
"""

# No `from __future__ import annotations`: FastAPI reads the plain server's route parameter types (Request), which it
# could not resolve from strings naming a function's local import.
import argparse
import asyncio
import contextlib
import json
import math
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
MODEL_NAME = "bench"
REQUEST_TIMEOUT_S = 60.0
# Generous bounds on the start of a child process or a deployment on a busy 2-core machine; a stuck one fails the run.
START_TIMEOUT_S = 120.0
DEPLOY_TIMEOUT_S = 240.0
POLL_S = 0.2
IDLE_SAMPLE_S = 3.0
# The goals.
BATCHING_GOAL = 3.0
BATCHING_GOAL_AT = 32
TAIL_GOAL = 2.0
SCALE_UP_GOAL_S = 20.0


# --------------------------------------------------------------------------------------------------- load generator


def _percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks; NaN when there is nothing to rank."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _summary(latencies: list[float], errors: int, seconds: float, **extra: Any) -> dict[str, Any]:
    return {
        "requests": len(latencies),
        "errors": errors,
        "throughput": len(latencies) / seconds,
        "p50_ms": _percentile(latencies, 0.50) * 1000,
        "p99_ms": _percentile(latencies, 0.99) * 1000,
        **extra,
    }


def _emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


async def _send(session: Any, url: str, body: bytes) -> bool:
    import aiohttp

    try:
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
            await response.read()
            return response.status == 200
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return False


async def _closed_loop(session: Any, spec: dict[str, Any], concurrency: int) -> dict[str, Any]:
    """N clients for warmup + duration; requests answered inside the measured window count."""
    url, body = spec["url"], spec["body"].encode()
    begin = time.perf_counter()
    measure_from, stop_at = begin + spec["warmup"], begin + spec["warmup"] + spec["duration"]
    latencies: list[float] = []
    errors = 0
    # The parent samples the servers' CPU time at this mark and again at the point's record.
    asyncio.get_running_loop().call_later(spec["warmup"], _emit, {"event": "measuring"})

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
    return _summary(latencies, errors, spec["duration"], concurrency=concurrency)


async def _open_loop(session: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """Requests sent at a fixed rate whatever the answers; latency runs from each request's scheduled time."""
    url, body, rate = spec["url"], spec["body"].encode(), spec["rate"]
    begin = time.perf_counter() + 0.05
    measure_from, stop_at = begin + spec["warmup"], begin + spec["warmup"] + spec["duration"]
    latencies: list[float] = []
    errors = dropped = 0
    pending: set[asyncio.Task[None]] = set()
    asyncio.get_running_loop().call_later(measure_from - time.perf_counter(), _emit, {"event": "measuring"})

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
    return _summary(latencies, errors + dropped, spec["duration"], rate=rate, achieved=achieved, dropped=dropped)


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


def load_generator_main(spec_json: str) -> None:
    asyncio.run(_generate_load(json.loads(spec_json)))


# ---------------------------------------------------------------------------------------------- plain HTTP server


def plain_server_main(model_uri: str, port: int, threads: int) -> None:
    """Baseline (b): the same Predictor behind FastAPI and uvicorn in one process, one forward per request."""
    from concurrent.futures import ThreadPoolExecutor

    import torch
    import uvicorn
    from fastapi import FastAPI, Request

    from bigmodel.runtime.artifacts import load_model
    from bigmodel.runtime.serving.predictor import build_predictor

    torch.set_num_threads(threads)
    model, config = load_model(model_uri)
    predictor = build_predictor(model, config)
    forward = ThreadPoolExecutor(max_workers=1)
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/v2/health/ready")
    async def ready() -> dict[str, Any]:
        return {"ready": True}

    @app.post("/v1/models/{name}:predict")
    async def predict(name: str, request: Request) -> dict[str, Any]:
        instances = json.loads(await request.body())["instances"]
        predictions = await asyncio.get_running_loop().run_in_executor(forward, predictor.predict, instances)
        return {"predictions": predictions}

    uvicorn.run(app, host=LOOPBACK, port=port, log_level="warning", access_log=False)


# ------------------------------------------------------------------------------------------------ child processes


class Child:
    """This script run again in another role; its stdout lines (JSON records) are read by a thread."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), *args],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            # Its own session: Ctrl-C reaches this process only, which then stops the child in order.
            start_new_session=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def record(self, timeout_s: float) -> dict[str, Any]:
        """The next JSON record; raises if none comes in time or the child ended."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"no answer from {self.process.args[2:4]} within {timeout_s:.0f} s") from None
            if line is None:
                raise RuntimeError(f"{self.process.args[2:4]} ended with code {self.process.wait()}")
            with contextlib.suppress(json.JSONDecodeError):
                return json.loads(line)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


@contextlib.contextmanager
def child(*args: str, env: dict[str, str] | None = None) -> Iterator[Child]:
    process = Child(*args, env=env)
    try:
        yield process
    finally:
        process.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _post(url: str, body: str) -> Any:
    request = urllib.request.Request(url, data=body.encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
        return json.loads(response.read())


def _wait_ready(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(urllib.error.URLError, OSError):
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        time.sleep(POLL_S)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s")


# -------------------------------------------------------------------------------------------------- measurements


@dataclass
class Bench:
    args: argparse.Namespace
    model_uri: str
    body: str
    started: float

    def say(self, line: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {line}", flush=True)

    def load(self, url: str, label: str, server_pids: list[int], **spec: Any) -> list[dict[str, Any]]:
        """Points from a load generator process against url; closed loop unless spec has a rate.

        Each point also gets the CPU time that the server's processes and the generator spent per answered request.
        """
        spec = {
            "url": url,
            "body": self.body,
            "warmup": self.args.warmup,
            "duration": self.args.duration,
            "mode": "open" if "rate" in spec else "closed",
            "concurrency": self.args.concurrency,
            "max_in_flight": 4096,
            **spec,
        }
        points = []
        per_point = spec["warmup"] + spec["duration"] + REQUEST_TIMEOUT_S
        with child("--role", "load", "--spec", json.dumps(spec)) as generator:
            generator.record(START_TIMEOUT_S)
            client_pids = [generator.process.pid]
            marks = (0.0, 0.0)
            while (record := generator.record(per_point))["event"] != "done":
                if record["event"] == "measuring":
                    marks = (cpu_seconds(server_pids), cpu_seconds(client_pids))
                    continue
                answered = max(record["requests"], 1)
                record["server_cpu_ms"] = (cpu_seconds(server_pids) - marks[0]) / answered * 1000
                record["client_cpu_ms"] = (cpu_seconds(client_pids) - marks[1]) / answered * 1000
                points.append(record)
                where = (
                    f"{record['rate']:.1f} req/s offered"
                    if "rate" in record
                    else f"concurrency {record['concurrency']:3d}"
                )
                self.say(f"{label:<13} {where}: {_point_text(record)}")
        return points


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes (all their threads) so far; a process gone counts nothing."""
    import psutil

    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


def _point_text(point: dict[str, Any]) -> str:
    errors = f"  errors {point['errors']}" if point["errors"] else ""
    cpu = f"  server CPU {point['server_cpu_ms']:5.2f} ms/req" if "server_cpu_ms" in point else ""
    return (
        f"{point['throughput']:8.1f} req/s  p50 {point['p50_ms']:7.1f} ms  p99 {point['p99_ms']:7.1f} ms{cpu}{errors}"
    )


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
        point = _summary(latencies, 0, time.perf_counter() - begin, concurrency=concurrency)
        point["server_cpu_ms"] = (time.process_time() - cpu_begin) / max(len(latencies), 1) * 1000
        points.append(point)
        bench.say(f"{'(a) in-proc':<13} concurrency {concurrency:3d}: {_point_text(point)}")
    return points


def forward_cost(predictor: Any, instance: Any, batch: int) -> tuple[float, float]:
    """Median seconds of predict() on 1 instance and on a full batch."""

    def median(count: int) -> float:
        predictor.predict([instance] * count)
        times = []
        deadline = time.perf_counter() + 1.5
        while len(times) < 5 or (len(times) < 50 and time.perf_counter() < deadline):
            start = time.perf_counter()
            predictor.predict([instance] * count)
            times.append(time.perf_counter() - start)
        return _percentile(times, 0.5)

    return median(1), median(batch)


def plain_http(bench: Bench, threads: int) -> list[dict[str, Any]]:
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with child(
        "--role",
        "plain-server",
        "--model-uri",
        bench.model_uri,
        "--port",
        str(port),
        "--threads",
        str(threads),
        env=env,
    ) as server:
        _wait_ready(f"http://{LOOPBACK}:{port}/v2/health/ready", START_TIMEOUT_S)
        url = f"http://{LOOPBACK}:{port}/v1/models/{MODEL_NAME}:predict"
        assert len(_post(url, bench.body)["predictions"]) == 1
        return bench.load(url, "(b) plain", [server.process.pid])


def service_spec(bench: Bench, *, batch: int, replicas: dict[str, Any]) -> Any:
    """A BigModelServiceSpec as a user writes it; the model name in URLs is MODEL_NAME."""
    from bigmodel.api.service import BigModelServiceSpec

    args = bench.args
    return BigModelServiceSpec.model_validate(
        {
            "model": {"uri": bench.model_uri, "name": MODEL_NAME},
            "replicas": replicas,
            "replicaResources": {"cpu": args.replica_cpus},
            "batching": {"maxBatchSize": batch, "waitTimeoutMs": args.wait_timeout_ms},
        }
    )


def deploy_service(bench: Bench, name: str, spec: Any, port: int) -> tuple[str, dict[str, Any]]:
    """The operator's Serve config for spec, deployed on the embedded Ray; returns the predict URL and the config."""
    import ray

    from bigmodel.builders.serve_app import app_args, model_version, serve_deploy_config
    from bigmodel.runtime.serving import local

    args = app_args(name, spec, bench.model_uri, model_version(bench.model_uri, name))
    config = serve_deploy_config(name, spec, args)
    resources = ray.cluster_resources()
    config, notes = local.local_deploy_config(
        config, port=port, cpus=resources.get("CPU", 1.0), gpus=resources.get("GPU", 0.0)
    )
    for note in notes:
        bench.say(f"note: {note}")
    start = time.monotonic()
    local.deploy(config, timeout_s=DEPLOY_TIMEOUT_S)
    deployment = config["applications"][0]["deployments"][0]
    bench.say(
        f"deployed {name} in {time.monotonic() - start:.1f} s: max_batch_size={args.max_batch_size} "
        f"wait={args.batch_wait_timeout_s * 1000:g} ms max_ongoing_requests={deployment['max_ongoing_requests']} "
        f"autoscaling={deployment['autoscaling_config']} actor={deployment['ray_actor_options']}"
    )
    url = f"{local.base_url(config)}/v1/models/{MODEL_NAME}:predict"
    assert len(_post(url, bench.body)["predictions"]) == 1
    return url, deployment


def _serve_details() -> dict[str, Any]:
    """What the Serve REST API (/api/serve/applications/) shows; the dashboard is off in the embedded Ray, so the
    controller is asked directly."""
    import ray
    from ray.serve.context import _get_global_client

    controller = _get_global_client()._controller
    return ray.get(controller.get_serve_instance_details.remote(), timeout=10)


def serve_pids(name: str) -> list[int]:
    """The processes a request passes through: the HTTP proxy and the application's replicas."""
    import psutil

    from bigmodel.api.serve_app import DEPLOYMENT_NAME

    replicas = _serve_details()["applications"][name]["deployments"][DEPLOYMENT_NAME]["replicas"]
    pids = [replica["pid"] for replica in replicas if replica.get("pid")]
    # The controller's details give no proxy pid; the embedded Ray's processes descend from this one, and Ray names
    # each worker process after its actor.
    for process in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if " ".join(process.cmdline()).startswith("ray::ProxyActor"):
                pids.append(process.pid)
    if len(pids) < len(replicas) + 1:
        raise RuntimeError(f"found the processes {pids} only, not every replica and the proxy of {name}")
    return pids


def delete_service(name: str) -> None:
    from ray import serve

    serve.delete(name)


def replica_counts(name: str) -> tuple[int, int]:
    """(target, running) replicas of the application's deployment, as the Serve controller has them."""
    from ray import serve

    from bigmodel.api.serve_app import DEPLOYMENT_NAME

    try:
        # target_num_replicas is the autoscaler's decision.
        deployment = _serve_details()["applications"][name]["deployments"][DEPLOYMENT_NAME]
        running = sum(1 for replica in deployment["replicas"] if str(replica["state"]).endswith("RUNNING"))
        return int(deployment["target_num_replicas"]), running
    except (AttributeError, KeyError, ImportError):
        # The public status has no target count: replicas in any state stand for it.
        overview = serve.status().applications[name].deployments[DEPLOYMENT_NAME]
        states = {str(state).rsplit(".", 1)[-1]: count for state, count in overview.replica_states.items()}
        return sum(states.values()), states.get("RUNNING", 0)


def scale_up(bench: Bench, port: int) -> dict[str, Any]:
    """Goal 4: seconds from the start of load until the target replica count exceeds 1, and until 2 replicas run."""
    args = bench.args
    spec = service_spec(
        bench,
        batch=args.max_batch_size,
        replicas={"min": 1, "max": 2, "targetOngoingRequests": args.autoscale_target},
    )
    name = "bench-autoscale"
    url, deployment = deploy_service(bench, name, spec, port)
    result: dict[str, Any] = {"config": deployment["autoscaling_config"], "target_s": None, "running_s": None}
    try:
        target, running = replica_counts(name)
        bench.say(f"before load: target {target} replica(s), {running} running")
        load = {"concurrency": [args.autoscale_concurrency], "warmup": 0, "duration": args.autoscale_timeout + 5}
        spec_json = json.dumps({"url": url, "body": bench.body, "mode": "closed", **load})
        with child("--role", "load", "--spec", spec_json) as generator:
            load_started = generator.record(START_TIMEOUT_S)["time"]
            bench.say(f"load: {args.autoscale_concurrency} closed-loop clients")
            seen = (target, running)
            while time.time() - load_started < args.autoscale_timeout:
                target, running = replica_counts(name)
                elapsed = time.time() - load_started
                if (target, running) != seen:
                    bench.say(f"  +{elapsed:5.1f} s: target {target} replica(s), {running} running")
                    seen = (target, running)
                if result["target_s"] is None and target > 1:
                    result["target_s"] = elapsed
                if result["running_s"] is None and running > 1:
                    result["running_s"] = elapsed
                    break
                time.sleep(POLL_S)
    finally:
        delete_service(name)
    return result


def serve_series(bench: Bench) -> dict[str, Any]:
    """(c), the open loop at half its peak, (d), and the scale-up; all on one embedded Ray."""
    import ray
    from ray import serve

    from bigmodel.runtime.embedded import embedded_ray

    args = bench.args
    results: dict[str, Any] = {}
    port = _free_port()
    fixed = {"min": 1, "max": 1}
    start = time.monotonic()
    with embedded_ray(num_cpus=args.ray_cpus):
        try:
            bench.say(
                f"embedded Ray up in {time.monotonic() - start:.1f} s with {ray.cluster_resources().get('CPU')} logical CPUs"
            )
            url, _ = deploy_service(
                bench, "bench-batch", service_spec(bench, batch=args.max_batch_size, replicas=fixed), port
            )
            pids = serve_pids("bench-batch")
            idle_from = cpu_seconds(pids)
            time.sleep(IDLE_SAMPLE_S)
            results["idle_cpu"] = (cpu_seconds(pids) - idle_from) / IDLE_SAMPLE_S
            bench.say(f"Serve proxy + replica at rest: {results['idle_cpu'] * 1000:.0f} ms CPU per second")
            results["batched"] = bench.load(url, "(c) serve b32", pids)
            peak = max(point["throughput"] for point in results["batched"])
            results["open"] = bench.load(url, "(c) open", pids, rate=peak / 2)[0]
            delete_service("bench-batch")

            url, _ = deploy_service(bench, "bench-single", service_spec(bench, batch=1, replicas=fixed), port)
            results["single"] = bench.load(url, "(d) serve b1", serve_pids("bench-single"))
            delete_service("bench-single")

            if not args.no_autoscale:
                results["scale"] = scale_up(bench, port)
        finally:
            with contextlib.suppress(Exception):
                serve.shutdown()
    return results


# ------------------------------------------------------------------------------------------------------- report


def _cell(point: dict[str, Any] | None) -> str:
    if point is None:
        return f"{'-':>24}"
    return f"{point['throughput']:7.1f} {point['p50_ms']:7.1f} {point['p99_ms']:8.1f}"


def _ratio(numerator: float | None, denominator: float | None) -> str:
    if not numerator or not denominator:
        return "   -  "
    return f"{numerator / denominator:6.2f}"


def _load_average() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


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

    def throughput(key: str, concurrency: int) -> float | None:
        point = by_concurrency.get(key, {}).get(concurrency)
        return point["throughput"] if point else None

    print()
    print(model_line)
    print(f"machine: {os.cpu_count()} cores; load average {load_before} at the start, {_load_average()} at the end")
    print(
        f"closed loop: {args.duration:g} s per point after {args.warmup:g} s warm-up (in-process: {args.inprocess_duration:g} s); "
        f"one replica with {args.replica_cpus:g} CPU; wait timeout {args.wait_timeout_ms} ms"
    )
    print(f"{'':>5} " + " ".join(f"{names[key]:>24}" for key in names))
    print(f"{'conc':>5} " + " ".join(f"{'req/s  p50 ms   p99 ms':>24}" for _ in names))
    for concurrency in args.concurrency:
        print(f"{concurrency:5d} " + " ".join(_cell(by_concurrency.get(key, {}).get(concurrency)) for key in names))
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
        cells = []
        for key in names:
            point = by_concurrency.get(key, {}).get(concurrency)
            if point is None or "server_cpu_ms" not in point:
                cells.append(f"{'-':>15}")
            elif "client_cpu_ms" in point:
                cells.append(f"{point['server_cpu_ms']:8.2f} /{point['client_cpu_ms']:5.2f}")
            else:
                cells.append(f"{point['server_cpu_ms']:8.2f}       ")
        print(f"{concurrency:5d} " + " ".join(cells))
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
        best = max(by_concurrency.get("single", {}).values(), key=lambda point: point["throughput"])
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


# ---------------------------------------------------------------------------------------------------------- main


def export_bench_model(args: argparse.Namespace, storage: str) -> tuple[str, Any, str]:
    """An untrained model of the chosen architecture, exported as a job exports one: (uri, instance, description).

    A throughput benchmark needs the forward's cost, not its answers, so the weights are left as initialised.
    """
    import torch

    from bigmodel.runtime.artifacts import export_model
    from bigmodel.runtime.serving.predictor import SAMPLE_DIGIT, SAMPLE_PROMPT
    from bigmodel.runtime.tasks import build_model_from_config

    torch.manual_seed(0)
    if args.task == "digits":
        config = {"task": "digits", "hidden_size": args.hidden_size}
        instance: Any = SAMPLE_DIGIT
        what = f"digits MLP 64-{args.hidden_size}-{args.hidden_size}-10"
    else:
        config = {
            "task": "gpt",
            "vocab_size": 256,
            "layers": args.gpt_layers,
            "heads": args.gpt_heads,
            "embed_dim": args.gpt_embed_dim,
            "context_length": args.gpt_context,
            "dropout": 0.0,
        }
        instance = {"prompt": SAMPLE_PROMPT, "max_new_tokens": args.new_tokens}
        what = (
            f"GPT {args.gpt_layers} layers x {args.gpt_embed_dim} wide, {args.gpt_heads} heads, context "
            f"{args.gpt_context}, {args.new_tokens} new bytes per request from a {len(SAMPLE_PROMPT)}-byte prompt"
        )
    model = build_model_from_config(config)
    parameters = sum(parameter.numel() for parameter in model.parameters())
    uri = export_model(storage, model, config, {})
    return uri, instance, f"{what} ({parameters / 1e6:.2f} M parameters, untrained)"


def run(args: argparse.Namespace) -> None:
    import torch

    from bigmodel.runtime.artifacts import load_model
    from bigmodel.runtime.serving.predictor import build_predictor
    from bigmodel.runtime.storage import resolve

    threads = max(1, math.floor(args.replica_cpus))
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="serve-load-") as storage:
        uri, instance, what = export_bench_model(args, storage)
        # Absolute: replicas are other processes, with working directories of their own.
        model_uri = resolve(uri).uri
        bench = Bench(args, model_uri, json.dumps({"instances": [instance]}), time.monotonic())
        model, config = load_model(model_uri)
        predictor = build_predictor(model, config)
        one, full = forward_cost(predictor, instance, args.max_batch_size)
        model_line = (
            f"model: {what}; predict() with {threads} torch thread(s): 1 instance {one * 1000:.2f} ms, "
            f"{args.max_batch_size} instances {full * 1000:.2f} ms ({full / args.max_batch_size * 1000:.2f} ms each, "
            f"{one * args.max_batch_size / full:.1f}x cheaper per instance)"
        )
        bench.say(model_line)
        load_before = _load_average()
        bench.say(f"load average of this machine (1, 5, 15 min): {load_before}")

        series: dict[str, list[dict[str, Any]]] = {}
        serve: dict[str, Any] = {}
        try:
            series["inproc"] = in_process(bench, predictor, instance)
            del predictor, model
            series["plain"] = plain_http(bench, threads)
            serve = serve_series(bench)
            series["batched"], series["single"] = serve.get("batched", []), serve.get("single", [])
        finally:
            report(args, model_line, load_before, series, serve)


def _concurrency(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of positive whole numbers, such as 1,4,32")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=["digits", "gpt"], default="digits")
    parser.add_argument("--hidden-size", type=int, default=2048, help="digits MLP width (default 2048)")
    parser.add_argument("--gpt-layers", type=int, default=2)
    parser.add_argument("--gpt-heads", type=int, default=4)
    parser.add_argument("--gpt-embed-dim", type=int, default=128)
    parser.add_argument("--gpt-context", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=8, help="bytes a GPT request generates (default 8)")
    parser.add_argument("--concurrency", type=_concurrency, default=[1, 4, 8, 16, 32, 64])
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per load point (default 8)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each point (default 2)")
    parser.add_argument("--inprocess-duration", type=float, default=2.0, help="seconds per in-process point")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--wait-timeout-ms", type=int, default=5, help="batching.waitTimeoutMs of (c) (default 5)")
    parser.add_argument("--replica-cpus", type=float, default=1.0, help="replicaResources.cpu (default 1)")
    parser.add_argument(
        "--ray-cpus", type=int, default=4, help="logical CPUs of the embedded Ray (room for 2 replicas)"
    )
    parser.add_argument("--autoscale-concurrency", type=int, default=32)
    parser.add_argument("--autoscale-target", type=float, default=1.0, help="targetOngoingRequests of the scale-up run")
    parser.add_argument("--autoscale-timeout", type=float, default=60.0)
    parser.add_argument("--no-autoscale", action="store_true", help="skip the scale-up measurement")
    # Internal: this script is also the load generator and the plain HTTP server, each in its own process.
    parser.add_argument("--role", choices=["bench", "load", "plain-server"], default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--model-uri", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.role == "load":
        load_generator_main(args.spec)
    elif args.role == "plain-server":
        plain_server_main(args.model_uri, args.port, args.threads)
    else:
        try:
            run(args)
        except KeyboardInterrupt:
            # The report of what was measured so far is printed; children and Ray are stopped on the way out.
            print("interrupted", file=sys.stderr)
            sys.exit(130)


if __name__ == "__main__":
    main()
