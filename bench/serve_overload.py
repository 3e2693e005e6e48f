"""Overload of `bigmodel serve`: 10x the load it sustains, against the guarded endpoint's bounded queue.

The real command serves an exported model (one replica, so that capacity does not move during the run) with the
spec's limits. In one run:

  1. sustainable   a closed loop of --concurrency clients for --duration: the throughput of answered requests is
                   the rate this server sustains here, on this machine, now.
  2. 1x            an open loop (fixed arrival rate) at that rate.
  3. 10x           an open loop at --factor times that rate: a request the queue has no room for must be answered
                   503 with Retry-After at once, and the served requests' latency must stay bounded (by the queue).

Latency is counted from each request's scheduled time, so a load generator that falls behind cannot hide queueing;
`sent` says what it managed to offer. Crashes are the processes that carried the requests (the command, Serve's
HTTP proxy and the replica) found gone or replaced afterwards; the endpoint must also still answer.

The load generator and the server share this machine's cores, so the figures are of this machine.

    python -m bench.serve_overload                            # GPT generating 32 bytes a request
    python -m bench.serve_overload --factor 10 --duration 10 --max-queued 100
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import bench_parser, run_until_interrupted
from bench.serving.harness import MODEL_NAME, START_TIMEOUT_S, Bench, free_port, wait_ready
from bench.serving.model import add_model_arguments, export_bench_model

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
STOP_TIMEOUT_S = 60.0
# The processes a request passes through, by the names Ray gives its workers.
SERVE_PROCESSES = ("ray::ProxyActor", "ray::ServeReplica")


def manifest(args: argparse.Namespace, model_uri: str) -> dict[str, Any]:
    return {
        "apiVersion": "bigmodel.dev/v1alpha1",
        "kind": "BigModelService",
        "metadata": {"name": "overload"},
        "spec": {
            "model": {"uri": model_uri, "name": MODEL_NAME},
            "replicas": {"min": 1, "max": 1},
            "replicaResources": {"cpu": args.replica_cpus},
            "batching": {"maxBatchSize": args.max_batch_size, "waitTimeoutMs": args.wait_timeout_ms},
            "limits": {"maxQueuedRequests": args.max_queued, "timeoutSeconds": args.timeout},
        },
    }


@contextlib.contextmanager
def serving(bench: Bench, manifest_path: Path, port: int) -> Iterator[subprocess.Popen[str]]:
    """`bigmodel serve` as a user runs it, until Ctrl-C at the end of the block."""
    command = [sys.executable, "-m", "bigmodel.cli", "serve", str(manifest_path), "--port", str(port)]
    command += ["--num-cpus", str(bench.args.ray_cpus)]
    # The repository's package, whether or not it is installed into this interpreter.
    path = os.pathsep.join(filter(None, [str(REPOSITORY_ROOT / "operator"), os.environ.get("PYTHONPATH")]))
    process = subprocess.Popen(
        command, env=os.environ | {"PYTHONPATH": path, "NO_COLOR": "1"}, text=True, start_new_session=True
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def serve_processes(root: int) -> dict[int, str]:
    """pid -> name of the proxy and replica processes under the command (Ray's processes descend from it)."""
    import psutil

    found = {}
    for process in psutil.Process(root).children(recursive=True):
        # Ray retitles a worker with the method it runs (ray::ProxyActor.ready), hence the prefixes.
        with contextlib.suppress(psutil.Error, IndexError):
            name = process.cmdline()[0]
            if name.startswith(SERVE_PROCESSES):
                found[process.pid] = name
    return found


def crashes(server: subprocess.Popen[str], before: dict[int, str]) -> list[str]:
    """What died or was replaced since `before`: the command itself, or a proxy or replica process."""
    if server.poll() is not None:
        return [f"bigmodel serve exited with {server.returncode}"]
    after = serve_processes(server.pid)
    gone = [f"{name} (pid {pid}) is gone" for pid, name in before.items() if pid not in after]
    new = [f"{name} (pid {pid}) was started again" for pid, name in after.items() if pid not in before]
    return gone + new


def point_line(label: str, point: dict[str, Any]) -> str:
    statuses = ", ".join(f"{code}: {count}" for code, count in sorted(point["statuses"].items()))
    offered = (
        f"{point['rate']:6.1f} req/s asked, {point['sent']:6.1f} sent, generator lag p99 {point['lag_p99_ms']:5.0f} ms"
    )
    return (
        f"{label:<4} {offered}; served {point['throughput']:6.1f} req/s, p50 {point['p50_ms']:7.1f} ms, "
        f"p99 {point['p99_ms']:7.1f} ms; answers {{{statuses}}}, Retry-After on {point['retry_after']}"
    )


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="serve-overload-") as storage:
        uri, instance, what = export_bench_model(args, storage)
        bench = Bench(args, uri, json.dumps({"instances": [instance]}), time.monotonic())
        bench.say(f"model: {what}")
        from bigmodel.api.service import BigModelService
        from bigmodel.builders.serve_app import proxy_in_flight_limit

        document = manifest(args, uri)
        spec = BigModelService.model_validate(document, by_alias=True).spec
        manifest_path = Path(storage) / "overload.yaml"
        manifest_path.write_text(json.dumps(document))
        port = free_port()
        url = f"http://127.0.0.1:{port}/v1/models/{MODEL_NAME}:predict"
        with serving(bench, manifest_path, port) as server:
            wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", START_TIMEOUT_S)
            bench.check_answer(url)
            before = serve_processes(server.pid)
            bench.say(f"serving: {len(before)} Serve processes {sorted(before.values())}")
            (peak,) = bench.load(url, "sustainable", list(before), concurrency=[args.concurrency])
            rate = peak["throughput"]
            if rate <= 0:
                bench.say("the server answered nothing under closed-loop load; no rate to multiply")
                return 1
            (one,) = bench.load(url, "1x", list(before), rate=rate)
            (many,) = bench.load(url, f"{args.factor:g}x", list(before), rate=rate * args.factor)
            died = crashes(server, before)
            alive = not died and _answers(bench, url)
        print()
        print(f"sustainable: {rate:.1f} req/s (closed loop, {args.concurrency} clients, {args.duration:g} s)")
        # Little's law: what the service holds at once, over what it serves, is the mean time a served request spends
        # in it; the queue's bound holds it there however many more requests arrive.
        capacity = proxy_in_flight_limit(spec)
        print(f"in flight at most: {capacity} (maxQueuedRequests {args.max_queued} + one replica's room)")
        print(point_line("1x", one))
        print(point_line(f"{args.factor:g}x", many))
        refused = many["statuses"].get("503", 0)
        print(f"503 at {args.factor:g}x: {refused}, {many['retry_after']} of them with Retry-After")
        print(f"served p99 at {args.factor:g}x vs 1x: {many['p99_ms']:.1f} ms vs {one['p99_ms']:.1f} ms")
        mean_ms = capacity / max(many["throughput"], 1e-9) * 1000
        print(
            f"  Little's law at {args.factor:g}x: {capacity} in flight / {many['throughput']:.1f} req/s = {mean_ms:.0f} ms"
        )
        print(f"crashes: {len(died)}" + "".join(f"\n  {line}" for line in died))
        print(f"answering after the overload: {'yes' if alive else 'no'}")
        return 0 if alive else 1


def _answers(bench: Bench, url: str) -> bool:
    try:
        bench.check_answer(url)
    except (OSError, AssertionError, KeyError, ValueError):
        return False
    return True


def main() -> None:
    parser = bench_parser("bench.serve_overload", __doc__)
    add_model_arguments(parser, task="gpt", new_tokens=32)
    parser.add_argument("--factor", type=float, default=10.0, help="overload as a multiple of the sustained rate")
    parser.add_argument("--concurrency", type=int, default=64, help="closed-loop clients measuring the rate")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per point (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each point")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--wait-timeout-ms", type=int, default=5)
    parser.add_argument("--replica-cpus", type=float, default=1.0)
    parser.add_argument("--ray-cpus", type=int, default=2, help="logical CPUs of the embedded Ray (default 2)")
    parser.add_argument("--max-queued", type=int, default=100, help="spec.limits.maxQueuedRequests (default 100)")
    parser.add_argument("--timeout", type=float, default=60.0, help="spec.limits.timeoutSeconds (default 60)")
    args = parser.parse_args()
    run_until_interrupted(run, args)


if __name__ == "__main__":
    main()
