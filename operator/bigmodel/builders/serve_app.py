"""The Ray Serve config of a BigModelService: what the operator PUTs to the head's Serve REST API.

`bigmodel serve` deploys the same application locally, so a manifest behaves the same on a laptop and in a cluster.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

from bigmodel.api import wire
from bigmodel.api.serve_app import ServeAppArgs
from bigmodel.api.service import BigModelServiceSpec

VERSION_LENGTH = 12


def model_name(service_name: str, spec: BigModelServiceSpec) -> str:
    return spec.model.name or service_name


def model_version(model_uri: str, source_revision: str = "") -> str:
    """A stable digest of what is served: the directory, and for a job's output, the run that wrote it."""
    return hashlib.sha256(f"{model_uri}\n{source_revision}".encode()).hexdigest()[:VERSION_LENGTH]


def app_args(service_name: str, spec: BigModelServiceSpec, model_uri: str, version: str) -> ServeAppArgs:
    return ServeAppArgs(
        model_uri=model_uri,
        model_name=model_name(service_name, spec),
        model_version=version,
        max_batch_size=spec.batching.max_batch_size,
        batch_wait_timeout_s=spec.batching.wait_timeout_ms / 1000,
        max_cached_tokens=spec.batching.max_cached_tokens,
        auth_required=spec.auth is not None,
        max_body_bytes=spec.limits.max_body_bytes,
        timeout_s=spec.limits.timeout_seconds,
    )


def max_ongoing_requests(spec: BigModelServiceSpec) -> int:
    """Requests one replica takes at once."""
    # A replica fills its next batch while the current one runs only if it may hold two batches of requests;
    # past this limit Serve's router holds requests back with a backoff of up to 0.5 s (bench.serve_load showed
    # throughput collapsing there). The autoscaler still aims for the target, so load beyond it adds replicas.
    return max(2 * spec.batching.max_batch_size, math.ceil(spec.replicas.target_ongoing_requests * 2))


def proxy_in_flight_limit(spec: BigModelServiceSpec) -> int:
    """Requests one Serve proxy holds at once: its own queue, and the room of as many replicas as the service may
    have (the other proxies may be idle, so one may fill every replica)."""
    return spec.limits.max_queued_requests + spec.replicas.max * max_ongoing_requests(spec)


def deployment_options(spec: BigModelServiceSpec) -> dict[str, Any]:
    """Serve's options for the one deployment: replica autoscaling and the Ray resources of each replica."""
    replicas = spec.replicas
    max_ongoing = max_ongoing_requests(spec)
    actor_options: dict[str, Any] = {"num_cpus": spec.replica_resources.cpu}
    if spec.replica_resources.gpu:
        actor_options["num_gpus"] = spec.replica_resources.gpu
    return {
        "name": wire.SERVE_DEPLOYMENT_NAME,
        "max_ongoing_requests": max_ongoing,
        # Serve's default stops an old replica before starting its replacement: with one replica, a model update
        # would drop requests. Surging starts replacements first (the operator adds up to workers.maxSurge pods
        # above maxReplicas for them), and old replicas drain their requests before they stop.
        "max_surge_percent": 100 if spec.workers.max_surge > 0 else 0,
        # Each proxy's router queues requests no replica has room for; past this it answers 503 with Retry-After
        # itself, without reading their bodies further or troubling a replica. The count is the router's own
        # (ray/serve/_private/router.py), so a service with N proxies queues up to N times this.
        "max_queued_requests": spec.limits.max_queued_requests,
        "backpressure_config": {"status_code": 503, "retry_after_s": wire.RETRY_AFTER_SECONDS},
        # A replica told to stop (a node drains, a pod is deleted, `bigmodel serve` stops) finishes its requests
        # first; none may run longer than the service's timeout, so that is how long it waits for them.
        "graceful_shutdown_timeout_s": spec.limits.timeout_seconds,
        "autoscaling_config": {
            "min_replicas": replicas.min,
            "initial_replicas": max(replicas.min, 1),
            "max_replicas": replicas.max,
            "target_ongoing_requests": replicas.target_ongoing_requests,
            "upscale_delay_s": replicas.upscale_delay_seconds,
            "downscale_delay_s": replicas.downscale_delay_seconds,
            "look_back_period_s": replicas.look_back_seconds,
            # Replicas for requests or for tokens to generate, whichever is more (runtime/serving/autoscaling.py);
            # Serve applies the delays and bounds above to its decision as to its own policy's.
            "policy": {
                "policy_function": wire.AUTOSCALING_POLICY_IMPORT_PATH,
                "policy_kwargs": {"target_pending_tokens": replicas.target_pending_tokens},
            },
        },
        "ray_actor_options": actor_options,
    }


def serve_application(
    service_name: str, spec: BigModelServiceSpec, args: ServeAppArgs, canary: bool = False
) -> dict[str, Any]:
    """The service's application, or its canary: the same, under the canary's name and route (wire.CANARY_*)."""
    return {
        "name": service_name + wire.CANARY_APP_SUFFIX if canary else service_name,
        "route_prefix": wire.CANARY_ROUTE_PREFIX if canary else "/",
        "import_path": wire.SERVE_APP_IMPORT_PATH,
        "args": args.model_dump(mode="json"),
        "deployments": [deployment_options(spec)],
    }


def serve_deploy_config(
    service_name: str, spec: BigModelServiceSpec, args: ServeAppArgs, canary: ServeAppArgs | None = None
) -> dict[str, Any]:
    """The whole declarative config (Ray's ServeDeploySchema). A proxy on every node that needs one (EveryNode: the
    head, and each node with a replica; ray/serve/_private/controller.py _update_proxy_nodes), all behind the
    Service clients call, so that a lost head is not a lost endpoint. Serve fixes the location when its controller
    starts: a cluster built before keeps its own until it is rebuilt. With `canary`, a second application serves
    the canary version beside the first; the proxies' guards send it its share."""
    applications = [serve_application(service_name, spec, args)]
    if canary is not None:
        applications.append(serve_application(service_name, spec, canary, canary=True))
    return {
        "proxy_location": "EveryNode",
        # The proxy's own timeout covers the time a request waits in its queue too; Serve reads http_options when it
        # starts only, so the replicas also time the model call (runtime/serving/app.py) with the current value.
        "http_options": {
            "host": "0.0.0.0",
            "port": wire.SERVE_PORT,
            "request_timeout_s": spec.limits.timeout_seconds,
        },
        "applications": applications,
    }
