"""How soon a burst of long generations gets a second replica: the product's token policy against Serve's default
request policy, everything else equal, in one run.

One byte-level GPT (untrained: its cost matters, not its answers) with a context long enough for the burst's
requests. For each policy in --policies, a fresh application of the product's Serve app, exactly as the operator
deploys it (builders/serve_app.py on an embedded Ray, as `bigmodel serve` does), from one BigModelService spec:
replicas 1..--max-replicas, targetOngoingRequests --target-ongoing-requests, targetPendingTokens
--target-pending-tokens, upscaleDelaySeconds --upscale-delay, --replica-cpus per replica. `tokens` is that config as
is; `requests` drops its autoscaling policy, so that Serve's default decides. Each application answers one short
request, rests --settle seconds (longer than Serve's 30 s look-back), then takes the burst: --concurrency clients
(a load generator process of its own), each streaming completions of --max-tokens tokens from a --prompt-bytes prompt
back to back for --duration seconds.

The defaults put 4 requests on a replica that aims for 3: the requests policy adds a replica only once the average
over its look-back passes 3 of 4, while the 4 x 1500 tokens are 12 replicas' worth of 500, so the token policy asks
for --max-replicas as soon as its first samples arrive. Per policy: seconds from the burst's first request until
Serve's target exceeds 1 and until a 2nd replica is RUNNING (the controller's counts, polled), the most replicas
running, those running at the burst's last answer, and time to first token p50/p99 over the burst; then the ratio
of the seconds to a 2nd running replica.

Serve's metrics come every 10 s (metrics_interval_s) averaged over 30 s, both policies alike, so the figures are
tens of seconds; a replica's start (a process, torch, the model) adds the same to both. Everything shares this
machine's cores; the ratio between policies of the same run is what to compare. Ctrl-C prints what was measured.

    python -m bench.serve_autoscale                                 # defaults: about 5 minutes on 2 cores
    python -m bench.serve_autoscale --policies tokens --duration 40 # the token policy alone
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

from bench import bench_parser, run_until_interrupted
from bench.serving.autoscale_report import report
from bench.serving.autoscale_runs import POLICIES


def settings_line(args: argparse.Namespace) -> str:
    return (
        f"burst: {args.concurrency} clients x {args.max_tokens} tokens from {args.prompt_bytes}-byte prompts, back to "
        f"back for {args.duration:g} s; replicas 1..{args.max_replicas} of {args.replica_cpus:g} CPU, "
        f"targetOngoingRequests {args.target_ongoing_requests:g}, targetPendingTokens {args.target_pending_tokens}, "
        f"upscaleDelaySeconds {args.upscale_delay:g}; embedded Ray with {args.ray_cpus} CPUs"
    )


def run(args: argparse.Namespace) -> None:
    from bench.serving.autoscale_runs import scaling_series
    from bench.serving.generation_runs import export_gpt
    from bench.serving.harness import Bench
    from bigmodel.runtime.storage import resolve

    started = time.monotonic()
    settings = settings_line(args)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="serve-autoscale-") as storage:
        # Absolute: replicas are other processes, with working directories of their own.
        bench = Bench(args, resolve(export_gpt(args, storage)).uri, "", started)
        bench.say(
            f"model: GPT {args.gpt_layers} layers x {args.gpt_embed_dim} wide, {args.gpt_heads} heads, context "
            f"{args.gpt_context} (untrained)"
        )
        bench.say(settings)
        try:
            scaling_series(bench, results)
        finally:
            report(settings, results)
            print(f"\nrun took {time.monotonic() - started:.0f} s")


def _policies(text: str) -> tuple[str, ...]:
    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    if not chosen or set(chosen) - set(POLICIES) or len(set(chosen)) < len(chosen):
        raise argparse.ArgumentTypeError(f"a comma-separated choice of {', '.join(POLICIES)}, each at most once")
    return chosen


def parser() -> argparse.ArgumentParser:
    parser = bench_parser("bench.serve_autoscale", __doc__)
    parser.add_argument(
        "--policies", type=_policies, default=POLICIES, help="which of tokens,requests to run, in order (default both)"
    )
    parser.add_argument("--concurrency", type=int, default=4, help="clients of the burst (default 4)")
    parser.add_argument("--max-tokens", type=int, default=1500, help="max_tokens of each request (default 1500)")
    parser.add_argument("--prompt-bytes", type=int, default=32, help="bytes of each prompt (default 32)")
    parser.add_argument("--duration", type=float, default=90.0, help="seconds the clients keep sending (default 90)")
    parser.add_argument("--settle", type=float, default=35.0, help="idle seconds before each burst (default 35)")
    parser.add_argument("--max-replicas", type=int, default=3, help="replicas.max (default 3)")
    parser.add_argument(
        "--target-ongoing-requests", type=float, default=3.0, help="replicas.targetOngoingRequests (default 3)"
    )
    parser.add_argument(
        "--target-pending-tokens", type=int, default=500, help="replicas.targetPendingTokens (default 500)"
    )
    parser.add_argument("--upscale-delay", type=float, default=5.0, help="replicas.upscaleDelaySeconds (default 5)")
    parser.add_argument("--replica-cpus", type=float, default=0.5, help="replicaResources.cpu (default 0.5)")
    parser.add_argument("--ray-cpus", type=int, default=2, help="logical CPUs of the embedded Ray (default 2)")
    parser.add_argument("--max-batch-size", type=int, default=32, help="batching.maxBatchSize (default 32)")
    parser.add_argument(
        "--wait-timeout-ms", type=int, default=10, help="batching.waitTimeoutMs (default 10; generation waits for none)"
    )
    parser.add_argument(
        "--request-timeout", type=float, default=300.0, help="seconds a request may take (limits.timeoutSeconds)"
    )
    parser.add_argument("--gpt-layers", type=int, default=2)
    parser.add_argument("--gpt-heads", type=int, default=4)
    parser.add_argument("--gpt-embed-dim", type=int, default=128)
    parser.add_argument("--gpt-context", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompts")
    return parser


def main() -> None:
    cli = parser()
    args = cli.parse_args()
    if min(args.concurrency, args.max_tokens, args.prompt_bytes, args.max_batch_size) < 1 or args.duration <= 0:
        cli.error(
            "--concurrency, --max-tokens, --prompt-bytes and --max-batch-size must be at least 1, --duration above 0"
        )
    if args.max_replicas < 2:
        cli.error("--max-replicas must be at least 2: the bench times the second replica")
    if args.prompt_bytes + args.max_tokens > args.gpt_context:
        cli.error("--prompt-bytes plus --max-tokens must fit --gpt-context (past it the model recomputes its window)")
    run_until_interrupted(run, args)


if __name__ == "__main__":
    main()
