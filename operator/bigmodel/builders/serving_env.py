"""The environment a BigModelService's Ray containers need for its endpoint's guards: the API keys and the limits
the Serve proxy enforces before a request reaches a replica."""

from __future__ import annotations

from typing import Any

from bigmodel.api import wire
from bigmodel.api.job import BigModelJob
from bigmodel.api.service import BigModelService, BigModelServiceSpec


def proxy_guard_env(spec: BigModelServiceSpec) -> dict[str, str]:
    """The Serve proxy's guard: Ray loads it into every proxy it starts, which reads its limit from the same env."""
    return {
        wire.PROXY_CALLBACK_ENV: wire.PROXY_GUARD_IMPORT_PATH,
        wire.MAX_BODY_BYTES_ENV: str(spec.limits.max_body_bytes),
    }


def api_key_env(service: BigModelService) -> list[dict[str, Any]]:
    """The keys from the service's Secret; never in the Serve config, which Ray's REST API shows to anyone."""
    auth = service.spec.auth
    if auth is None:
        return []
    return [{"name": wire.API_KEYS_ENV, "valueFrom": {"secretKeyRef": {"name": auth.secret_name, "key": auth.key}}}]


def serving_env(owner: BigModelJob | BigModelService) -> list[dict[str, Any]]:
    """Every Ray container of a service gets the same: the proxy runs on the head, replicas on any pod."""
    if not isinstance(owner, BigModelService):
        return []
    guard = [{"name": name, "value": value} for name, value in proxy_guard_env(owner.spec).items()]
    return [*guard, *api_key_env(owner)]
