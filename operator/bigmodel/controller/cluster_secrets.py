"""The data of the Secrets the operator makes for each Ray cluster, which the builders make without it: the
cluster's Ray token (derived from the operator's key: cluster_tokens.py) and, with GCS fault tolerance, its Redis
password (copied from the operator's own Secret: a pod reads Secrets of its own namespace only)."""

from __future__ import annotations

import base64
from typing import Any

from bigmodel.api import wire
from bigmodel.builders.gcs_fault_tolerance import REDIS_SECRET_COMPONENT
from bigmodel.controller.cluster_tokens import ClusterTokens
from bigmodel.controller.kube import SECRETS, KubeClient, KubeError


class ClusterSecrets:
    def __init__(self, tokens: ClusterTokens, redis_password: str | None = None) -> None:
        self._tokens = tokens
        self._redis_password = redis_password

    def filled(self, secret: dict[str, Any]) -> dict[str, Any]:
        """A cluster's Secret, as a builder made it, with its data."""
        if secret["metadata"]["labels"].get(wire.COMPONENT_LABEL) != REDIS_SECRET_COMPONENT:
            return self._tokens.filled(secret)
        if self._redis_password is None:
            raise ValueError(f"Secret {secret['metadata']['name']}: the operator was given no Redis password")
        encoded = base64.b64encode(self._redis_password.encode()).decode()
        return secret | {"data": {wire.GCS_REDIS_SECRET_KEY: encoded}}


async def load_redis_password(kube: KubeClient, namespace: str, name: str, key: str) -> str:
    """The Redis password from its Secret in the operator's namespace; the operator does not start without it."""
    stored = await kube.get(SECRETS, namespace, name)
    encoded = ((stored or {}).get("data") or {}).get(key)
    if not encoded:
        what = "not found" if stored is None else f"has no {key!r}"
        raise KubeError(422, "GET", f"secrets/{name}", f"the Redis password Secret {namespace}/{name} {what}")
    return base64.b64decode(encoded).decode()
