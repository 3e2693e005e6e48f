"""(c) Serve with batching, (d) Serve with batch size 1 and the scale-up: the Serve application exactly as the
operator deploys it (builders/serve_app.py), deployed on an embedded Ray by runtime/serving/local.py."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from typing import Any

from bench.serving.children import child, cpu_seconds
from bench.serving.harness import MODEL_NAME, POLL_S, START_TIMEOUT_S, Bench, free_port
from bigmodel.api.wire import SERVE_DEPLOYMENT_NAME

# A generous bound on a deployment on a busy 2-core machine; a stuck one fails the run.
DEPLOY_TIMEOUT_S = 240.0
IDLE_SAMPLE_S = 3.0
ONE_REPLICA = {"min": 1, "max": 1}


def service_spec(
    bench: Bench, *, batch: int, replicas: dict[str, Any], limits: dict[str, Any] | None = None, **batching: Any
) -> Any:
    """A BigModelServiceSpec as a user writes it; the model name in URLs is MODEL_NAME. batching: more of its
    batching fields (maxCachedTokens)."""
    from bigmodel.api.service import BigModelServiceSpec

    args = bench.args
    document: dict[str, Any] = {
        "model": {"uri": bench.model_uri, "name": MODEL_NAME},
        "replicas": replicas,
        "replicaResources": {"cpu": args.replica_cpus},
        "batching": {"maxBatchSize": batch, "waitTimeoutMs": args.wait_timeout_ms, **batching},
    }
    if limits is not None:
        document["limits"] = limits
    return BigModelServiceSpec.model_validate(document)


def local_config(bench: Bench, name: str, spec: Any, port: int) -> tuple[dict[str, Any], Any]:
    """The operator's Serve config for spec as `bigmodel serve` adjusts it for the embedded Ray, and its app args."""
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
    return config, args


def deploy_config(bench: Bench, name: str, config: dict[str, Any], what: str) -> dict[str, Any]:
    """config deployed on the embedded Ray, waiting until it answers; returns its one deployment's options."""
    from bigmodel.runtime.serving import local

    start = time.monotonic()
    local.deploy(config, timeout_s=DEPLOY_TIMEOUT_S)
    deployment = config["applications"][0]["deployments"][0]
    bench.say(
        f"deployed {name} in {time.monotonic() - start:.1f} s: {what} "
        f"max_ongoing_requests={deployment['max_ongoing_requests']} "
        f"autoscaling={deployment['autoscaling_config']} actor={deployment['ray_actor_options']}"
    )
    return deployment


def deploy_service(bench: Bench, name: str, spec: Any, port: int) -> tuple[str, dict[str, Any]]:
    """The operator's Serve config for spec, deployed on the embedded Ray; returns the predict URL and the config."""
    from bigmodel.runtime.serving import local

    config, args = local_config(bench, name, spec, port)
    what = f"max_batch_size={args.max_batch_size} wait={args.batch_wait_timeout_s * 1000:g} ms"
    deployment = deploy_config(bench, name, config, what)
    url = f"{local.base_url(config)}/v1/models/{MODEL_NAME}:predict"
    bench.check_answer(url)
    return url, deployment


@contextlib.contextmanager
def deployed(bench: Bench, name: str, spec: Any, port: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """deploy_service for the length of the block; the application is deleted after it."""
    from ray import serve

    url, deployment = deploy_service(bench, name, spec, port)
    try:
        yield url, deployment
    finally:
        serve.delete(name)


def deployment_details(name: str) -> dict[str, Any]:
    """The application's one deployment as the Serve REST API (/api/serve/applications/) shows it; the dashboard is
    off in the embedded Ray, so the controller is asked directly."""
    import ray
    from ray.serve.context import _get_global_client

    controller = _get_global_client()._controller
    details = ray.get(controller.get_serve_instance_details.remote(), timeout=10)
    return details["applications"][name]["deployments"][SERVE_DEPLOYMENT_NAME]


def serve_pids(name: str) -> list[int]:
    """The processes a request passes through: the HTTP proxy and the application's replicas."""
    import psutil

    replicas = deployment_details(name)["replicas"]
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


def replica_counts(name: str) -> tuple[int, int]:
    """(target, running) replicas of the application's deployment, as the Serve controller has them."""
    from ray import serve

    try:
        # target_num_replicas is the autoscaler's decision.
        deployment = deployment_details(name)
        running = sum(1 for replica in deployment["replicas"] if str(replica["state"]).endswith("RUNNING"))
        return int(deployment["target_num_replicas"]), running
    except (AttributeError, KeyError, ImportError):
        # The public status has no target count: replicas in any state stand for it.
        overview = serve.status().applications[name].deployments[SERVE_DEPLOYMENT_NAME]
        states = {str(state).rsplit(".", 1)[-1]: count for state, count in overview.replica_states.items()}
        return sum(states.values()), states.get("RUNNING", 0)


class ScaleWatch:
    """A deployment's replica counts, polled under load: each change said, and the seconds at which the target and
    the running replicas first exceeded 1 kept in `result` (target_s, running_s)."""

    def __init__(self, bench: Bench, name: str, result: dict[str, Any], seen: tuple[int, int] | None = None) -> None:
        self.bench, self.name, self.result, self.seen = bench, name, result, seen
        result.setdefault("target_s", None)
        result.setdefault("running_s", None)

    def poll(self, elapsed: float) -> tuple[int, int]:
        """(target, running) now, `elapsed` seconds into the load."""
        target, running = replica_counts(self.name)
        if (target, running) != self.seen:
            self.bench.say(f"  +{elapsed:5.1f} s: target {target} replica(s), {running} running")
            self.seen = (target, running)
        if self.result["target_s"] is None and target > 1:
            self.result["target_s"] = elapsed
        if self.result["running_s"] is None and running > 1:
            self.result["running_s"] = elapsed
        return target, running


def scale_up(bench: Bench, port: int) -> dict[str, Any]:
    """Goal 4: seconds from the start of load until the target replica count exceeds 1, and until 2 replicas run."""
    args = bench.args
    spec = service_spec(
        bench,
        batch=args.max_batch_size,
        replicas={"min": 1, "max": 2, "targetOngoingRequests": args.autoscale_target},
    )
    name = "bench-autoscale"
    with deployed(bench, name, spec, port) as (url, deployment):
        result: dict[str, Any] = {"config": deployment["autoscaling_config"]}
        target, running = replica_counts(name)
        bench.say(f"before load: target {target} replica(s), {running} running")
        load = bench.load_spec(
            url, concurrency=[args.autoscale_concurrency], warmup=0, duration=args.autoscale_timeout + 5
        )
        with child("loadgen", json.dumps(load)) as generator:
            load_started = generator.record(START_TIMEOUT_S)["time"]
            bench.say(f"load: {args.autoscale_concurrency} closed-loop clients")
            watch = ScaleWatch(bench, name, result, seen=(target, running))
            while time.time() - load_started < args.autoscale_timeout:
                _, running = watch.poll(time.time() - load_started)
                if running > 1:
                    break
                time.sleep(POLL_S)
    return result


@contextlib.contextmanager
def serving_ray(bench: Bench, spec: Any) -> Iterator[None]:
    """An embedded Ray of --ray-cpus CPUs whose Serve proxy runs as a service's pods run it, and as `bigmodel serve`
    starts it: with the guard and the router's backoff for `spec` (builders/serving_env.py), which Ray reads once,
    when it starts the proxy. Serve is shut down after the block."""
    import ray
    from ray import serve

    from bigmodel.builders.serving_env import proxy_env
    from bigmodel.runtime.embedded import embedded_ray

    os.environ.update(proxy_env(spec))
    start = time.monotonic()
    with embedded_ray(num_cpus=bench.args.ray_cpus):
        try:
            bench.say(
                f"embedded Ray up in {time.monotonic() - start:.1f} s with {ray.cluster_resources().get('CPU')} logical CPUs"
            )
            yield
        finally:
            with contextlib.suppress(Exception):
                serve.shutdown()


def serve_series(bench: Bench) -> dict[str, Any]:
    """(c), the open loop at half its peak, (d), and the scale-up; all on one embedded Ray."""
    args = bench.args
    results: dict[str, Any] = {}
    port = free_port()
    batched = service_spec(bench, batch=args.max_batch_size, replicas=ONE_REPLICA)
    with serving_ray(bench, batched):
        with deployed(bench, "bench-batch", batched, port) as (url, _):
            pids = serve_pids("bench-batch")
            idle_from = cpu_seconds(pids)
            time.sleep(IDLE_SAMPLE_S)
            results["idle_cpu"] = (cpu_seconds(pids) - idle_from) / IDLE_SAMPLE_S
            bench.say(f"Serve proxy + replica at rest: {results['idle_cpu'] * 1000:.0f} ms CPU per second")
            results["batched"] = bench.load(url, "(c) serve b32", pids)
            peak = max(point["throughput"] for point in results["batched"])
            results["open"] = bench.load(url, "(c) open", pids, rate=peak / 2)[0]

        with deployed(bench, "bench-single", service_spec(bench, batch=1, replicas=ONE_REPLICA), port) as (url, _):
            results["single"] = bench.load(url, "(d) serve b1", serve_pids("bench-single"))

        if not args.no_autoscale:
            results["scale"] = scale_up(bench, port)
    return results
