"""The Kubernetes Service clients call: the model's HTTP endpoint, moved between clusters on an upgrade."""

from __future__ import annotations

from typing import Any

from bigmodel.api import wire
from bigmodel.api.service import BigModelService
from bigmodel.builders import naming
from bigmodel.builders.owned import object_metadata


def serving_selector(service_name: str, generation: int) -> dict[str, str]:
    """Every pod of one cluster that may run a Serve proxy (proxy_location EveryNode): the head and the workers.
    Kubernetes sends to the ready ones only, and a service's pod is ready while its proxy answers its health check,
    so a lost head costs the requests in flight on it and the workers' proxies take the rest. Moving traffic to
    another cluster replaces the cluster and generation keys of this selector."""
    return naming.cluster_selector(service_name, generation, wire.SERVICE_KIND) | {
        wire.GENERATION_LABEL: str(generation),
        wire.SERVE_PROXY_LABEL: "true",
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
