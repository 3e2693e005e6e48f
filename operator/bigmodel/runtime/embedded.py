"""The embedded local Ray cluster behind `bigmodel train`: started by the command, stopped when it ends."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Iterator

import ray

from bigmodel.api import wire
from bigmodel.api.job import BigModelJobSpec


def local_worker_resources(spec: BigModelJobSpec) -> dict[str, float]:
    """One CPU per worker, and the spec's GPUs when this machine has them.

    The manifest's pod sizes describe Kubernetes nodes; on one machine every worker shares its cores.
    """
    resources: dict[str, float] = {"CPU": 1.0}
    if spec.uses_gpu():
        resources["GPU"] = float(spec.workers.resources.gpu)
    return resources


def local_cpus(spec: BigModelJobSpec) -> int:
    """Enough logical CPUs for every worker to be placed, even on a machine with fewer cores."""
    return max(os.cpu_count() or 1, spec.workers.replicas)


def require_token() -> None:
    """Ray's token auth for every cluster this process starts, and every Ray process under it: another user of this
    machine cannot join the cluster or run code on it. One random token for the life of the process, which Ray
    reads once and keeps."""
    os.environ[wire.RAY_AUTH_MODE_ENV] = "token"
    os.environ.setdefault(wire.RAY_AUTH_TOKEN_ENV, secrets.token_hex(32))
    # The processes Ray starts read the environment; this one may have read its auth settings already (anything that
    # imports parts of Ray can), and would then start the cluster with token auth while itself sending no token.
    # Ray's own `ray start` path refreshes them the same way (authentication_token_setup._enable_token_auth).
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@contextlib.contextmanager
def embedded_ray(num_cpus: int, *, verbose: bool = False) -> Iterator[str]:
    """A private Ray cluster on this machine for the duration of the block, with token auth; yields its address."""
    require_token()
    # "local" always starts a new cluster: without it Ray would join any cluster `ray start` left on this machine.
    context = ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        log_to_driver=verbose,
        logging_level=logging.INFO if verbose else logging.ERROR,
        configure_logging=True,
    )
    try:
        yield context.address_info["address"]
    finally:
        ray.shutdown()
