"""The Kubernetes Service clients call: the model's HTTP endpoint, moved between clusters on an upgrade."""

from __future__ import annotations

from typing import Any

from bigmodel.api.service import BigModelService
from bigmodel.builders import naming
from bigmodel.builders.ray_cluster import SERVE_PORT, object_metadata


def serving_selector(service_name: str, generation: int) -> dict[str, str]:
    """The head pod of one cluster: the Serve proxy runs there and nowhere else (proxy_location HeadOnly)."""
    kind = "BigModelService"
    return naming.cluster_selector(service_name, generation, kind) | {
        naming.GENERATION_LABEL: str(generation),
        naming.ROLE_LABEL: "head",
    }


def serving_service(service: BigModelService, generation: int) -> dict[str, Any]:
    """ClusterIP: the inference port is for the cluster's own clients; an Ingress or Gateway may expose it."""
    name = service.metadata.name
    labels = {
        "app.kubernetes.io/name": "bigmodel",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": "serving",
        naming.MANAGED_BY_LABEL: naming.OPERATOR_NAME,
        naming.SERVICE_LABEL: name,
    }
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_metadata(service, naming.serving_service_name(name), labels),
        "spec": {
            "type": "ClusterIP",
            "selector": serving_selector(name, generation),
            "ports": [{"name": "http", "port": SERVE_PORT, "targetPort": "serve", "protocol": "TCP"}],
        },
    }
