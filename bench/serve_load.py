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

Generative models are measured in generation mode by bench.serve_generation, the successor of --task gpt here:
continuous batching (the engine, streamed over OpenAI's /v1/completions) against request-level batching, with
time to first token and inter-token latency on a mixed workload.

    python -m bench.serve_load                               # digits MLP, hidden size 2048
    python -m bench.serve_load --task gpt                    # small GPT generating --new-tokens bytes per request
    python -m bench.serve_load --duration 5 --concurrency 1,8,32 --no-autoscale
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from typing import Any

from bench import bench_parser, run_until_interrupted
from bench.serving.baselines import in_process, plain_http
from bench.serving.harness import Bench
from bench.serving.model import add_model_arguments, export_bench_model, forward_cost
from bench.serving.ray_serve import serve_series
from bench.serving.report import load_average, report


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
        load_before = load_average()
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
    parser = bench_parser("bench.serve_load", __doc__)
    add_model_arguments(parser, task="digits", new_tokens=8)
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
    args = parser.parse_args()

    run_until_interrupted(run, args)


if __name__ == "__main__":
    main()
