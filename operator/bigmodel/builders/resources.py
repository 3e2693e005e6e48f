"""Kubernetes quantities turned into what pods ask for and how much shared memory Ray gets."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from bigmodel.api.common import Resources, quantity_value

GPU_RESOURCE = "nvidia.com/gpu"
# Ray's object store defaults to 30% of the node's memory and lives in /dev/shm; a smaller /dev/shm sends it to disk.
SHM_FRACTION = Decimal("0.3")


def requirements(resources: Resources) -> dict[str, Any]:
    """Requests equal to limits: Guaranteed QoS, and GPU nodes are never overcommitted."""
    amounts = {"cpu": str(resources.cpu), "memory": str(resources.memory)}
    if resources.gpu:
        amounts[GPU_RESOURCE] = str(resources.gpu)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def shm_size_limit(memory: int | str) -> str:
    return str(int(quantity_value(memory) * SHM_FRACTION))
