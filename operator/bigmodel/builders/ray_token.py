"""A cluster's Ray token: the Secret that holds it and the environment that gives it to every Ray process.

Every Ray cluster runs Ray's token auth: its GCS, dashboard (job, Serve and State APIs) and the training progress
endpoint refuse a caller without the cluster's own token. One Secret per cluster generation holds it, owned by the
job or service, so it goes with the cluster's owner; pods read it from the Secret, never from their spec. The Secret
is built here without its data: the controller, which alone holds the key the token is derived from, adds it.
"""

from __future__ import annotations

from typing import Any

from bigmodel.api import wire
from bigmodel.builders import naming
from bigmodel.builders.owned import ClusterOwner, cluster_object_labels, object_metadata


def token_secret(owner: ClusterOwner, generation: int) -> dict[str, Any]:
    name = naming.token_secret_name(owner.metadata.name, generation, owner.kind)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": object_metadata(owner, name, cluster_object_labels(owner, generation, "ray-token")),
        "type": "Opaque",
    }


def token_env(owner: ClusterOwner, generation: int) -> list[dict[str, Any]]:
    name = naming.token_secret_name(owner.metadata.name, generation, owner.kind)
    return [
        {"name": wire.RAY_AUTH_MODE_ENV, "value": "token"},
        {
            "name": wire.RAY_AUTH_TOKEN_ENV,
            "valueFrom": {"secretKeyRef": {"name": name, "key": wire.TOKEN_SECRET_KEY}},
        },
    ]
