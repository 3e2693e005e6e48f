"""`bigmodel serve`: the operator's Serve config, deployed on the embedded local Ray and reachable from this machine only.

The config is the one builders/serve_app.py renders for the cluster, adjusted only where this machine differs:
Ray's ports are unauthenticated, so the proxy listens on the loopback interface, and replicas ask for no more than
this machine has, or they would never start.
"""

from __future__ import annotations

import copy
import logging
import time
import urllib.error
import urllib.request
from typing import Any

LOOPBACK = "127.0.0.1"
SERVE_LOGGER_NAME = "ray.serve"
POLL_SECONDS = 0.5
# Long enough for a cold start on a loaded laptop; short enough that a stuck deploy is reported, not waited on forever.
DEPLOY_TIMEOUT_SECONDS = 300.0


class DeployFailed(Exception):
    """The application did not become ready; str() is one line saying why."""


def local_deploy_config(
    config: dict[str, Any], *, port: int, cpus: float, gpus: float
) -> tuple[dict[str, Any], list[str]]:
    """The deploy config for this machine, and one note for each change a user should know about."""
    local = copy.deepcopy(config)
    local["http_options"] = {**local.get("http_options", {}), "host": LOOPBACK, "port": port}
    notes: list[str] = []
    for application in local["applications"]:
        for deployment in application.get("deployments", []):
            actor = deployment.get("ray_actor_options", {})
            if actor.get("num_gpus") and not gpus:
                del actor["num_gpus"]
                notes.append("this machine has no GPU: replicas run on the CPU")
            elif actor.get("num_gpus", 0) > gpus:
                actor["num_gpus"] = gpus
                notes.append(f"each replica gets the {gpus:g} GPU(s) this machine has")
            if actor.get("num_cpus", 0) > cpus:
                notes.append(f"each replica gets the {cpus:g} CPU(s) Ray may use here, not {actor['num_cpus']:g}")
                actor["num_cpus"] = cpus
    return local, notes


def base_url(config: dict[str, Any]) -> str:
    options = config["http_options"]
    return f"http://{options['host']}:{options['port']}"


def _last_line(message: str) -> str:
    """The exception at the end of a traceback Serve reports, which says what went wrong."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no reason given"


def _failure_reason(status: Any) -> str:
    """Why an application failed: a replica's error when one failed (the model did not load), else the app's own."""
    for deployment in status.deployments.values():
        if deployment.status in ("DEPLOY_FAILED", "UNHEALTHY") and deployment.message.strip():
            return _last_line(deployment.message)
    return _last_line(status.message)


def deploy(config: dict[str, Any], *, verbose: bool = False, timeout_s: float = DEPLOY_TIMEOUT_SECONDS) -> None:
    """Start Serve and deploy the config the way Ray's Serve REST API does, then wait until requests are answered."""
    from ray import serve

    # Serve's public API deploys Application objects only; a declarative config goes through the same two calls the
    # REST API (dashboard serve_head) and `serve run config.yaml` make, so import_path and args are exercised here too.
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    if not verbose:
        # Serve logs its progress at INFO in this process; the command prints its own short lines instead.
        logging.getLogger(SERVE_LOGGER_NAME).setLevel(logging.WARNING)
    schema = ServeDeploySchema.model_validate(config)
    client = serve_start(http_options=schema.http_options.model_dump(), proxy_location=schema.proxy_location)
    client.deploy_apps(schema)
    deadline = time.monotonic() + timeout_s
    for application in schema.applications:
        _wait_running(serve, application.name, deadline, timeout_s)
    _wait_answering(f"{base_url(config)}/v2/health/ready", deadline, timeout_s)


def _wait_running(serve: Any, name: str, deadline: float, timeout_s: float) -> None:
    status = None
    while time.monotonic() < deadline:
        status = serve.status().applications.get(name)
        if status is not None and status.status == "RUNNING":
            return
        if status is not None and status.status == "DEPLOY_FAILED":
            raise DeployFailed(f"application {name} failed to deploy: {_failure_reason(status)}")
        time.sleep(POLL_SECONDS)
    state = status.status.value if status is not None else "not started"
    raise DeployFailed(f"application {name} was not running after {timeout_s:.0f} s (status: {state})")


def _wait_answering(url: str, deadline: float, timeout_s: float) -> None:
    # RUNNING means the replicas are up; the proxy learns the route a moment later.
    # No proxies: an HTTP_PROXY in the environment must not carry a request for the loopback interface elsewhere.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while time.monotonic() < deadline:
        try:
            with opener.open(url, timeout=POLL_SECONDS * 4) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(POLL_SECONDS)
    raise DeployFailed(f"{url} did not answer within {timeout_s:.0f} s")


def drain(config: dict[str, Any]) -> None:
    """Take no new requests and finish those in flight. Deleting an application stops its replicas gracefully: each
    waits for its requests, up to the deployment's graceful_shutdown_timeout_s (builders/serve_app.py); the proxy
    keeps carrying their answers meanwhile and answers 404 to new ones. (serve.shutdown would stop the proxy at once,
    cutting every stream.)"""
    from ray import serve

    for application in config["applications"]:
        serve.delete(application["name"], _blocking=True)
