"""The built-in train loop on gloo ranks without Ray (`torch_ranks.run_ranks`): what Ray Train gives a worker (its
rank, device and DDP wrapper, its node) is stood in for, and nothing else of the loop changes.

    run_ranks(builtin_loop_on_rank, 2, settings.model_dump(mode="json"))

No progress recorder: the run's outcome is what it leaves in storage (checkpoints and the exported model).
"""

from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from bigmodel.runtime import train_loop
from bigmodel.runtime.interruptions import Interruptions


def _ray_for(rank: int, world: int) -> SimpleNamespace:
    context = SimpleNamespace(get_world_rank=lambda: rank, get_world_size=lambda: world)
    return SimpleNamespace(
        train=SimpleNamespace(
            get_context=lambda: context,
            torch=SimpleNamespace(get_device=lambda: torch.device("cpu"), prepare_model=DistributedDataParallel),
        ),
        get_runtime_context=lambda: SimpleNamespace(get_node_id=lambda: f"node-{rank}"),
    )


def builtin_loop_on_rank(rank: int, world: int, settings: dict[str, Any]) -> None:
    """builtin_train_loop on this rank; settings is a LoopSettings as JSON, with no worker_resources (not elastic)."""
    # The rank's own process: these stand-ins end with it.
    train_loop.ray = _ray_for(rank, world)  # type: ignore[assignment]
    # No node drains here, and asking Ray which do would need a Ray cluster.
    train_loop.Interruptions = functools.partial(Interruptions, draining=dict)  # type: ignore[misc]
    train_loop.builtin_train_loop({"settings": settings})
