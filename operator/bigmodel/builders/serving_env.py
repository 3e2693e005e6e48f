"""The environment a BigModelService's Ray containers need for its endpoint's guards: the API keys and the limits
the Serve proxy enforces before a request reaches a replica."""

from __future__ import annotations

from typing import Any

from bigmodel.api import wire
from bigmodel.api.job import BigModelJob
from bigmodel.api.service import BigModelService, BigModelServiceSpec
from bigmodel.builders.serve_app import proxy_in_flight_limit


def proxy_env(spec: BigModelServiceSpec) -> dict[str, str]:
    """The Serve proxies': their guard, which Ray loads into every proxy it starts (on the head and on each worker
    with a replica) and which reads its limits from the same env, and how often their routers look for room on a
    replica. Each proxy counts its own requests."""
    return {
        wire.ROUTER_MAX_BACKOFF_ENV: str(wire.ROUTER_MAX_BACKOFF_S),
        wire.PROXY_CALLBACK_ENV: wire.PROXY_GUARD_IMPORT_PATH,
        wire.MAX_BODY_BYTES_ENV: str(spec.limits.max_body_bytes),
        wire.MAX_IN_FLIGHT_ENV: str(proxy_in_flight_limit(spec)),
        wire.PROXY_REQUIRES_KEYS_ENV: "1" if spec.auth is not None else "0",
    }


def api_key_env(service: BigModelService) -> list[dict[str, Any]]:
    """The keys from the service's Secret; never in the Serve config, which Ray's REST API shows to anyone."""
    auth = service.spec.auth
    if auth is None:
        return []
    return [{"name": wire.API_KEYS_ENV, "valueFrom": {"secretKeyRef": {"name": auth.secret_name, "key": auth.key}}}]


def serving_env(owner: BigModelJob | BigModelService) -> list[dict[str, Any]]:
    """Every Ray container of a service gets the same: proxies run on the head and the workers, replicas on any
    worker."""
    if not isinstance(owner, BigModelService):
        return []
    proxy = [{"name": name, "value": value} for name, value in proxy_env(owner.spec).items()]
    return [*proxy, *api_key_env(owner)]
