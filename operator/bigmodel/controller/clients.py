"""What every reconcile pass needs, made once at operator start-up."""

from __future__ import annotations

from dataclasses import dataclass

from bigmodel.controller.cluster_secrets import ClusterSecrets
from bigmodel.controller.cluster_tokens import ClusterTokens
from bigmodel.controller.kube import KubeClient
from bigmodel.controller.metrics import OperatorMetrics
from bigmodel.controller.ray_client import RayClient
from bigmodel.controller.settings import OperatorSettings


@dataclass(frozen=True)
class Clients:
    kube: KubeClient
    ray: RayClient
    settings: OperatorSettings
    metrics: OperatorMetrics
    tokens: ClusterTokens
    secrets: ClusterSecrets
