"""Saving a run's checkpoints from every worker, synchronously or while training goes on.

Every worker writes its part (bigmodel.runtime.sharded_state); rank 0 marks the checkpoint complete once all have.
With async saves a worker trains on while threads copy its state to host memory and write it: only its next
optimizer step waits for the copy, which overlaps the forward and backward passes. One save is in flight at a time,
so a new save first waits for the previous one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from bigmodel.runtime import sharded_state
from bigmodel.runtime.checkpoints import CheckpointInfo, CheckpointStore, Resume

# Told of each checkpoint once it is complete, on rank 0, with the seconds its save held training up.
OnComplete = Callable[[CheckpointInfo, float], None]


@dataclass
class _InFlight:
    save: sharded_state.AsyncSave
    step: int
    epoch: int
    metrics: dict[str, float]
    stall_s: float


class Checkpointing:
    """The checkpoints of one start of the loop on one worker; every worker calls every method, in the same order."""

    def __init__(self, store: CheckpointStore, *, rank: int, async_save: bool, on_complete: OnComplete) -> None:
        self._store = store
        self._rank = rank
        self._on_complete = on_complete
        # Checkpoint collectives exchange Python objects on the CPU, whatever backend training uses (NCCL on GPUs), and
        # an async save's run from its writing thread while training's run on the default group meanwhile.
        self._group = dist.new_group(backend="gloo")
        self._stager = sharded_state.host_stager() if async_save else None
        self._in_flight: _InFlight | None = None

    def resume(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> Resume:
        """Restore the newest checkpoint that loads into model and optimizer (see CheckpointStore.resume)."""
        return self._store.resume(
            lambda directory: sharded_state.restore(directory, model, optimizer, process_group=self._group)
        )

    def save(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, *, step: int, epoch: int, metrics: dict[str, float]
    ) -> None:
        """Save the state after `step`; the seconds it held training up reach on_complete with the checkpoint."""
        started = time.perf_counter()
        self.wait()
        if self._rank == 0:
            self._store.clear(step)
        dist.barrier(group=self._group)  # no worker writes into the step's directory before it is clear
        directory = self._store.directory(step)
        if self._stager is None:
            sharded_state.save(directory, model, optimizer, process_group=self._group)
            self._complete(step, epoch, metrics, time.perf_counter() - started)
            return
        save = sharded_state.save_async(directory, model, optimizer, process_group=self._group, stager=self._stager)
        self._in_flight = _InFlight(save, step, epoch, metrics, time.perf_counter() - started)

    def before_update(self) -> None:
        """Call before the optimizer changes the model: waits until the save in flight has its copy of the state."""
        if self._in_flight is not None and not self._in_flight.save.staged.done():
            started = time.perf_counter()
            with sharded_state.one_line_failures(f"saving step {self._in_flight.step}"):
                self._in_flight.save.staged.result()
            self._in_flight.stall_s += time.perf_counter() - started

    def poll(self) -> None:
        """Complete the save in flight if it is written, without waiting."""
        if self._in_flight is not None and self._in_flight.save.written.done():
            self.wait()

    def wait(self) -> None:
        """Wait for the save in flight and complete it; a failed write raises here."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            with sharded_state.one_line_failures(f"saving step {in_flight.step}"):
                in_flight.save.written.result()
            self._complete(in_flight.step, in_flight.epoch, in_flight.metrics, in_flight.stall_s)

    def close(self) -> None:
        """Wait for the save in flight, then stop the copying thread."""
        self.wait()
        if self._stager is not None:
            self._stager.close()

    def _complete(self, step: int, epoch: int, metrics: dict[str, float], stall_s: float) -> None:
        # On rank 0 the save is done once every worker's part is written and the checkpoint's metadata with them.
        if self._rank == 0:
            self._on_complete(self._store.complete(step=step, epoch=epoch, metrics=metrics), stall_s)
