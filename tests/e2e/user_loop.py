"""A user's own Ray Train loop, as an `entrypoint` workload names it: `user_loop:train`."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import ray.train
import torch
import torch.distributed as dist

from bigmodel.api.wire import STORAGE_ENV


def train(config: dict) -> None:
    context = ray.train.get_context()
    # An all-reduce across the ranks: proves the workers form one process group.
    value = torch.tensor([float(context.get_world_rank() + 1)])
    dist.all_reduce(value)
    storage = Path(os.environ[STORAGE_ENV])
    record = {"rank": context.get_world_rank(), "world": context.get_world_size(), "sum": value.item(), **config}
    (storage / f"rank-{context.get_world_rank()}.json").write_text(json.dumps(record))
    ray.train.report({"sum": value.item()})


def broken(config: dict) -> None:
    """A loop with a bug a user would make: it reads a config key the job does not set."""
    print("learning rate", config["learning_rate"])


def hangs_in_a_collective(config: dict) -> None:
    """Rank 0 waits in an all-reduce that the other ranks never join: a hung collective, as a stuck peer makes it."""
    if ray.train.get_context().get_world_rank() == 0:
        dist.all_reduce(torch.ones(1))
    else:
        time.sleep(float(config["sleepSeconds"]))


def stalls(config: dict) -> None:
    """Reports a few steps, then makes no more progress and never fails: a loop stuck on its data or its storage."""
    from bigmodel.runtime import user_loop

    for step in range(1, 4):
        user_loop.report({"loss": 1.0 / step}, step=step, total_steps=100)
    time.sleep(float(config["sleepSeconds"]))
