"""The Ray token of every cluster, derived from one key that only the operator holds.

A cluster's token is HMAC-SHA256(key, "<owner uid>/<generation>"): as unguessable as a random one to anyone without
the key, different for every cluster, and known to the operator without reading any Secret back. The operator may
therefore create and delete the clusters' token Secrets but never read one: its RBAC has no `get` of Secrets
but of its own key's, in its own namespace, by name.

The key lives in a Secret in the operator's namespace, made by the operator the first time it starts (a Helm render
cannot keep a random value across upgrades, nor `helm template` at all). Deleting it cuts the operator off from
every running cluster: their tokens no longer match, and Ray refuses the operator's calls.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import Any

from bigmodel.api import wire
from bigmodel.controller.kube import SECRETS, KubeClient, KubeError
from bigmodel.reconcile.observed import RayHead

KEY_FIELD = "key"
KEY_BYTES = 32


class ClusterTokens:
    def __init__(self, key: bytes) -> None:
        if len(key) < KEY_BYTES:
            raise ValueError(f"the token key must have at least {KEY_BYTES} bytes")
        self._key = key

    def token(self, owner_uid: str, generation: int) -> str:
        return hmac.new(self._key, f"{owner_uid}/{generation}".encode(), hashlib.sha256).hexdigest()

    def of(self, head: RayHead) -> str:
        return self.token(head.owner_uid, head.generation)

    def filled(self, secret: dict[str, Any]) -> dict[str, Any]:
        """A cluster's token Secret (builders/ray_token.py) with its token, from its owner and generation labels."""
        meta = secret["metadata"]
        owner_uid = meta["labels"][wire.OWNER_UID_LABEL]
        generation = int(meta["labels"][wire.GENERATION_LABEL])
        token = self.token(owner_uid, generation)
        return secret | {"data": {wire.TOKEN_SECRET_KEY: base64.b64encode(token.encode()).decode()}}


async def load_key(kube: KubeClient, namespace: str, name: str) -> bytes:
    """The operator's key: read from its Secret, or made and stored there the first time. Two replicas starting
    together agree: the one whose create loses (409) reads the winner's."""
    stored = await kube.get(SECRETS, namespace, name)
    if stored is None:
        key = secrets.token_bytes(KEY_BYTES)
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace, "labels": {wire.PART_OF_LABEL: wire.OPERATOR_NAME}},
            "type": "Opaque",
            "data": {KEY_FIELD: base64.b64encode(key).decode()},
        }
        if await kube.create_if_absent(SECRETS, namespace, body):
            return key
        stored = await kube.get(SECRETS, namespace, name)
    encoded = ((stored or {}).get("data") or {}).get(KEY_FIELD)
    if not encoded:
        raise KubeError(422, "GET", f"secrets/{name}", f"Secret {namespace}/{name} has no {KEY_FIELD!r}")
    return base64.b64decode(encoded)
