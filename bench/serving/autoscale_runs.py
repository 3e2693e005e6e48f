"""The runs of `python -m bench.serve_autoscale`: the product's Serve application, as the operator deploys it, under a
burst of long generations, once with each autoscaling policy, on one embedded Ray.

Each policy gets a fresh application of the same spec (burst_spec); `requests` takes the operator's config with the
autoscaling policy removed, so that Serve's default (requests in flight per replica) decides with every other setting
equal. Before its burst each application answers one short request and then rests for --settle seconds, longer than
Serve's look-back (30 s), so that both policies start from a window of idle samples. While the burst's load
generator (generation_load, a process of its own) runs, the Serve controller's replica counts are polled.
"""

from __future__ import annotations

import copy
import json
import time
from typing import Any

from bench.serving.children import child
from bench.serving.generation_load import SSE, WorkItem
from bench.serving.generation_runs import RECORD_SLACK_S, first_answer
from bench.serving.harness import MODEL_NAME, POLL_S, START_TIMEOUT_S, Bench, free_port
from bench.serving.ray_serve import ScaleWatch, deploy_config, local_config, service_spec, serving_ray

TOKENS = "tokens"
REQUESTS = "requests"
POLICIES = (TOKENS, REQUESTS)
APP_PREFIX = "bench-autoscale"
# The request each application answers before it rests: the path is warm and the answer is checked.
WARM_UP = WorkItem("def fibonacci(n):", 8)


def policy_config(config: dict[str, Any], policy: str) -> dict[str, Any]:
    """The operator's Serve config for the policy: as it is for `tokens`; for `requests`, without the autoscaling
    policy, so that Serve's default decides with every other setting as the operator renders it."""
    if policy == TOKENS:
        return config
    config = copy.deepcopy(config)
    for deployment in config["applications"][0]["deployments"]:
        del deployment["autoscaling_config"]["policy"]
    return config


def burst_spec(bench: Bench) -> Any:
    """The BigModelService spec both policies serve: min 1 replica, the run's targets and upscale delay."""
    args = bench.args
    return service_spec(
        bench,
        batch=args.max_batch_size,
        replicas={
            "min": 1,
            "max": args.max_replicas,
            "targetOngoingRequests": args.target_ongoing_requests,
            "targetPendingTokens": args.target_pending_tokens,
            "upscaleDelaySeconds": args.upscale_delay,
        },
        limits={"timeoutSeconds": args.request_timeout},
    )


def load_spec(bench: Bench, url: str) -> dict[str, Any]:
    """generation_load's closed loop: --concurrency clients, each streaming --max-tokens tokens from a
    --prompt-bytes prompt, back to back, for --duration seconds."""
    args = bench.args
    return {
        "url": url,
        "kind": SSE,
        "model": MODEL_NAME,
        "workload": {
            "seed": args.seed,
            "count": args.concurrency,
            "prompt_bytes": [args.prompt_bytes, args.prompt_bytes],
            "max_tokens": [args.max_tokens, args.max_tokens],
        },
        "warmup": 0,
        "duration": args.duration,
        "request_timeout": args.request_timeout,
        "concurrency": [args.concurrency],
    }


def burst(bench: Bench, policy: str, port: int) -> dict[str, Any]:
    """One policy: its application deployed, warmed, rested, then the burst; what the replicas did meanwhile."""
    from ray import serve

    from bigmodel.runtime.serving import local

    args = bench.args
    name = f"{APP_PREFIX}-{policy}"
    config, _ = local_config(bench, name, burst_spec(bench), port)
    config = policy_config(config, policy)
    deploy_config(bench, name, config, f"policy {policy}:")
    try:
        url = f"{local.base_url(config)}/v1/completions"
        first_answer(bench, url, SSE, WARM_UP)
        bench.say(f"{policy}: answered; resting {args.settle:g} s so that Serve's look-back holds only idle samples")
        time.sleep(args.settle)
        return _watch(bench, name, load_spec(bench, url))
    finally:
        serve.delete(name)


def _watch(bench: Bench, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Runs the burst and polls the replica counts until its last answer; times count from its first request."""
    args = bench.args
    result: dict[str, Any] = {"most": 1, "end": 1, "point": None}
    watch = ScaleWatch(bench, name, result)
    bound = args.duration + args.request_timeout + RECORD_SLACK_S
    with child("generation_load", json.dumps(spec)) as generator:
        started = generator.record(START_TIMEOUT_S)["time"]
        bench.say(f"burst: {args.concurrency} clients, {args.max_tokens} tokens a request, for {args.duration:g} s")
        while True:
            record = generator.poll()
            elapsed = time.time() - started
            if record is not None and record["event"] == "point":
                result["point"] = record
            if record is not None and record["event"] == "done":
                break
            if elapsed > bound:
                raise RuntimeError(f"the burst did not end within {bound:.0f} s")
            _, running = watch.poll(elapsed)
            result["most"] = max(result["most"], running)
            result["end"] = running
            time.sleep(POLL_S)
    result["burst_s"] = time.time() - started
    return result


def scaling_series(bench: Bench, results: dict[str, Any]) -> None:
    """Each policy of --policies in turn on one embedded Ray; results[policy] as soon as its burst ends."""
    port = free_port()
    with serving_ray(bench, burst_spec(bench)):
        for policy in bench.args.policies:
            results[policy] = burst(bench, policy, port)
