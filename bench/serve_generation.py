"""Text generation served with continuous batching against request-level batching, and the engine's own limit, in
one run; the generation-mode successor of bench.serve_load.

One byte-level GPT (untrained: the forward's cost matters, not its answers), a mixed workload (a fixed list of
--requests requests drawn from --seed: prompts of --prompt-bytes, max_tokens in --max-tokens, greedy), and three
systems under the same closed loops (each concurrency for --duration seconds after --warmup):

  (a) engine in-process   the generation engine (EngineLoop over BuiltinGpt) in this process, no HTTP: N asyncio
                          tasks, each streaming its requests back to back. The limit a server could reach.
  (b) request-level       the pre-engine serving path (bench/serving/request_level.py): no KV cache, a batch grouped
                          by prompt length runs until its longest member ends, every token re-runs the whole window;
                          a Serve app with @serve.batch (maxBatchSize as (c), waitTimeoutMs --wait-timeout-ms) and one
                          JSON answer per request.
  (c) continuous          the product's Serve application exactly as the operator deploys it (builders/serve_app.py on
                          an embedded Ray, as `bigmodel serve` does): POST /v1/completions, stream true, temperature 0,
                          stream_options.include_usage.

(b) and (c) get the same replica resources (--replica-cpus), maxBatchSize and Serve options, and run one after the
other on one embedded Ray. Torch uses floor(--replica-cpus) threads in (a), as Ray sets OMP_NUM_THREADS in a replica.
The load generator (bench/serving/generation_load.py) is a process of its own (aiohttp, reading the events line by
line as they come). Each point: output tokens/s and requests/s (each request counted with the share of its life inside
the window, so that (b)'s long batches are measured at their rate), time to first token p50/p99 ((b): the whole
latency), inter-token latency p50/p99 ((b): n/a), errors, and the CPU time the server (and the generator) spent per
answered request; and how many streams came mostly in one chunk (text the server held back, which their TTFT and
ITL then show). Then an open loop on (c) at half of its peak request rate (fixed arrival rate, latency counted from
each request's scheduled time). The goals: (c)/(b) tokens/s at concurrency 32 >= 3x; (c) TTFT p99/p50 at half peak
<= 3x.

Everything shares this machine's cores with the load generator, Ray's processes and whatever else runs here, so the
figures are of this machine; the ratios between systems of the same run are what to compare. Ctrl-C prints what was
measured so far.

    python -m bench.serve_generation                                      # defaults: about 10 minutes on 2 cores
    python -m bench.serve_generation --duration 4 --warmup 1 --concurrency 1,8,32    # a short run, about 3 minutes
    python -m bench.serve_generation --systems a --duration 2 --concurrency 1,4      # the engine alone, no Ray
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from typing import Any

from bench import bench_parser, run_until_interrupted
from bench.serving.generation_load import workload
from bench.serving.generation_report import report
from bench.serving.report import load_average

SYSTEMS = ("a", "b", "c")


def run(args: argparse.Namespace) -> None:
    import torch

    from bench.serving.generation_runs import engine_in_process, export_gpt, serve_series, workload_spec
    from bench.serving.harness import Bench
    from bigmodel.runtime.artifacts import load_model
    from bigmodel.runtime.storage import resolve

    started = time.monotonic()
    threads = max(1, math.floor(args.replica_cpus))
    torch.set_num_threads(threads)
    items = workload(workload_spec(args))
    workload_line = (
        f"workload: {len(items)} requests (seed {args.seed}), prompts {args.prompt_bytes[0]}..{args.prompt_bytes[1]} "
        f"bytes (mean {sum(len(item.prompt) for item in items) / len(items):.0f}), max_tokens "
        f"{args.max_tokens[0]}..{args.max_tokens[1]} (mean {sum(item.max_tokens for item in items) / len(items):.0f}), "
        "greedy, taken round-robin"
    )
    with tempfile.TemporaryDirectory(prefix="serve-generation-") as storage:
        uri = export_gpt(args, storage)
        # Absolute: replicas are other processes, with working directories of their own.
        model_uri = resolve(uri).uri
        bench = Bench(args, model_uri, "", started)
        model, _ = load_model(model_uri)
        parameters = sum(parameter.numel() for parameter in model.parameters())
        model_line = (
            f"model: GPT {args.gpt_layers} layers x {args.gpt_embed_dim} wide, {args.gpt_heads} heads, context "
            f"{args.gpt_context} ({parameters / 1e6:.2f} M parameters, untrained); {threads} torch thread(s)"
        )
        bench.say(model_line)
        bench.say(workload_line)
        if args.prompt_bytes[1] + args.max_tokens[1] > args.gpt_context:
            bench.say("note: the longest requests outgrow the context; past it every system recomputes the window")
        load_before = load_average()
        bench.say(f"load average of this machine (1, 5, 15 min): {load_before}")

        results: dict[str, Any] = {}
        try:
            if "a" in args.systems:
                engine_in_process(bench, model, items, results.setdefault("a", []))
            del model
            if {"b", "c"} & set(args.systems):
                serve_series(bench, items, results)
        finally:
            report(args, model_line, workload_line, load_before, results)
            print(f"\nrun took {time.monotonic() - started:.0f} s")


def _concurrency(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of positive whole numbers, such as 1,4,32")
    return values


def _range(text: str) -> tuple[int, int]:
    parts = text.split(",")
    try:
        low, high = (int(part) for part in parts)
    except ValueError:
        raise argparse.ArgumentTypeError("two whole numbers, LOW,HIGH, such as 16,128") from None
    if not 1 <= low <= high:
        raise argparse.ArgumentTypeError("LOW,HIGH with 1 <= LOW <= HIGH")
    return low, high


def _systems(text: str) -> tuple[str, ...]:
    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = sorted(set(chosen) - set(SYSTEMS))
    if not chosen or unknown:
        raise argparse.ArgumentTypeError(f"a comma-separated choice of {', '.join(SYSTEMS)}")
    return chosen


def main() -> None:
    parser = bench_parser("bench.serve_generation", __doc__)
    parser.add_argument("--concurrency", type=_concurrency, default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per load point (default 10)")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each point (default 3)")
    parser.add_argument(
        "--systems",
        type=_systems,
        default=SYSTEMS,
        help="which of a,b,c to measure (default all; a alone needs no Ray)",
    )
    parser.add_argument("--no-open-loop", action="store_true", help="skip the open loop on (c) at half its peak")
    parser.add_argument(
        "--max-batch-size", type=int, default=64, help="batching.maxBatchSize of (b) and (c), engine bound of (a)"
    )
    parser.add_argument("--wait-timeout-ms", type=int, default=10, help="batching.waitTimeoutMs (only (b) waits)")
    parser.add_argument(
        "--max-cached-tokens", type=int, default=65536, help="batching.maxCachedTokens of (c), the cache bound of (a)"
    )
    parser.add_argument("--replica-cpus", type=float, default=1.0, help="replicaResources.cpu (default 1)")
    parser.add_argument("--ray-cpus", type=int, default=2, help="logical CPUs of the embedded Ray (default 2)")
    parser.add_argument(
        "--request-timeout", type=float, default=180.0, help="seconds a request may take (limits.timeoutSeconds)"
    )
    parser.add_argument("--gpt-layers", type=int, default=4)
    parser.add_argument("--gpt-heads", type=int, default=4)
    parser.add_argument("--gpt-embed-dim", type=int, default=256)
    parser.add_argument("--gpt-context", type=int, default=256)
    parser.add_argument("--requests", type=int, default=256, help="requests in the workload's fixed list")
    parser.add_argument("--prompt-bytes", type=_range, default=(16, 128), help="LOW,HIGH prompt bytes (default 16,128)")
    parser.add_argument("--max-tokens", type=_range, default=(16, 128), help="LOW,HIGH max_tokens (default 16,128)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the workload")
    args = parser.parse_args()
    if args.requests < 1 or args.max_batch_size < 1 or args.duration <= 0 or args.warmup < 0:
        parser.error("--requests and --max-batch-size must be at least 1, --duration above 0, --warmup not below 0")

    run_until_interrupted(run, args)


if __name__ == "__main__":
    main()
