"""The Kubernetes Service clients call: the model's HTTP endpoint, moved between clusters on an upgrade."""

from __future__ import annotations

from typing import Any

from bigmodel.api import wire
from bigmodel.api.service import BigModelService
from bigmodel.builders import naming
from bigmodel.builders.owned import object_metadata


def serving_selector(service_name: str, generation: int) -> dict[str, str]:
    """The head pod of one cluster: the Serve proxy runs there and nowhere else (proxy_location HeadOnly)."""
    return naming.cluster_selector(service_name, generation, wire.SERVICE_KIND) | {
        wire.GENERATION_LABEL: str(generation),
        wire.ROLE_LABEL: "head",
    }


def serving_service(service: BigModelService, generation: int) -> dict[str, Any]:
    """ClusterIP: the inference port is for the cluster's own clients; an Ingress or Gateway may expose it."""
    name = service.metadata.name
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_metadata(
            service, naming.serving_service_name(name), naming.owner_labels(name, "serving", wire.SERVICE_KIND)
        ),
        "spec": {
            "type": "ClusterIP",
            "selector": serving_selector(name, generation),
            "ports": [{"name": "http", "port": wire.SERVE_PORT, "targetPort": "serve", "protocol": "TCP"}],
        },
    }
