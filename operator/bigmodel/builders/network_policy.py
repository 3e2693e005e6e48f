"""The NetworkPolicy of one Ray cluster, made with it in its owner's namespace.

Ray's nodes need every port among themselves (GCS, object transfer, NCCL, worker ports chosen at random), so the
cluster's own pods may reach each other on any port; nothing else may, but the operator on the ports it calls and,
for a service, the clients its spec names on the inference port. The cluster's pods are picked by its name and its
owner's uid: a later resource of the same name is another cluster. Egress is not restricted: training reads data
and writes checkpoints wherever the job says, which only the cluster admin knows (README, "Network isolation").

A NetworkPolicy is enforced by the CNI; where the CNI does not, Ray's token auth still stands.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bigmodel.api import wire
from bigmodel.api.service import BigModelService
from bigmodel.builders import naming
from bigmodel.builders.owned import ClusterOwner, cluster_object_labels, cluster_pods, object_metadata

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
"""Set by the API server on every namespace (Kubernetes 1.22+), so a namespace can be selected by its name."""
DEFAULT_OPERATOR_NAMESPACE = "bigmodel-system"
DEFAULT_OPERATOR_POD_LABELS = {wire.NAME_LABEL: wire.OPERATOR_NAME}


@dataclass(frozen=True)
class OperatorPeer:
    """Where the operator's own pods run and how they are labelled (the chart's selector labels)."""

    namespace: str = DEFAULT_OPERATOR_NAMESPACE
    pod_labels: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_OPERATOR_POD_LABELS))

    def peer(self) -> dict[str, Any]:
        return {
            "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: self.namespace}},
            "podSelector": {"matchLabels": dict(self.pod_labels)},
        }


# The ports the operator calls: Ray's dashboard (job, Serve and State APIs) and, on a job's head, its progress; on a
# service's head, the Serve proxy's canary traffic (wire.TRAFFIC_PATH).
_OPERATOR_PORTS = {
    "BigModelJob": (wire.RAY_DASHBOARD_PORT, wire.PROGRESS_PORT),
    "BigModelService": (wire.RAY_DASHBOARD_PORT, wire.SERVE_PORT),
}
_SAME_NAMESPACE: list[dict[str, Any]] = [{"podSelector": {}}]


def _ports(*numbers: int) -> list[dict[str, Any]]:
    return [{"port": number, "protocol": "TCP"} for number in numbers]


def serving_peers(service: BigModelService) -> list[dict[str, Any]]:
    """Who may call a service's inference port: its spec's peers, else every pod of its namespace."""
    peers = service.spec.serving_from
    return [peer.to_wire() for peer in peers] if peers is not None else list(_SAME_NAMESPACE)


def network_policy(owner: ClusterOwner, generation: int, operator: OperatorPeer) -> dict[str, Any]:
    selector = cluster_pods(owner, generation)
    ingress: list[dict[str, Any]] = [
        {"from": [{"podSelector": {"matchLabels": selector}}]},
        {"from": [operator.peer()], "ports": _ports(*_OPERATOR_PORTS[owner.kind])},
    ]
    if isinstance(owner, BigModelService):
        ingress.append({"from": serving_peers(owner), "ports": _ports(wire.SERVE_PORT)})
    name = naming.network_policy_name(owner.metadata.name, generation, owner.kind)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": object_metadata(owner, name, cluster_object_labels(owner, generation, "network-policy")),
        "spec": {"podSelector": {"matchLabels": selector}, "policyTypes": ["Ingress"], "ingress": ingress},
    }
