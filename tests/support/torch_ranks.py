"""Real torch.distributed workers without Ray: `world` fresh processes joined in one gloo process group.

For the pieces Ray Train runs on its workers (sharding, sharded checkpoints) where the question is what torch does with
them, not what Ray does: a few seconds a test instead of a Ray cluster's start.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

RankFunction = Callable[..., None]

# Ranks are forked from a server that imported these once: a spawned rank spends seconds importing torch.
mp.set_forkserver_preload(["torch", "torch.distributed.checkpoint", "bigmodel.runtime.sharded_state"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _entry(rank: int, function: RankFunction, world: int, port: int, args: tuple[Any, ...]) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        function(rank, world, *args)
    finally:
        dist.destroy_process_group()


def run_ranks(function: RankFunction, world: int, *args: Any, timeout_s: float = 180) -> None:
    """function(rank, world, *args) on every rank; a rank's exception fails the call, and so does not finishing in
    time. function must be importable by name (a module-level function) and its arguments picklable."""
    context = mp.start_processes(
        _entry, args=(function, world, _free_port(), args), nprocs=world, join=False, start_method="forkserver"
    )
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise AssertionError(f"{world} rank(s) of {function.__name__} did not finish within {timeout_s:.0f} s")
