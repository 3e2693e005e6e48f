"""A run's model and optimizer as torch.distributed.checkpoint (DCP) files: every worker writes and reads its own part.

There is no gather to rank 0: under FSDP each worker writes its shards, under DDP the replicated tensors are spread
over the workers. The files record each tensor's global shape, so a checkpoint written by N workers loads onto M, with
either strategy. The files are written into <step directory>/shards/; the step directory's completion marker is the
caller's (bigmodel.runtime.checkpoints). Checkpoints of earlier runtimes (one state.pt written by rank 0) load too.

Object-store URIs go through fsspec (s3fs and gcsfs are in the runtime image), with credentials from the environment.

For a user's own loop, with shard() from bigmodel.runtime.sharding:

    save(directory, model, optimizer)      # every rank, into one shared directory
    restore(directory, model, optimizer)   # every rank, whatever the world size that saved it
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import CheckpointException
from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter
from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.checkpoint.state_dict_saver import AsyncSaveResponse

from bigmodel.runtime.errors import one_line
from bigmodel.runtime.storage import Location, exists, read_torch

SHARDS_DIR = "shards"
# What rank 0 of earlier runtimes wrote: {"model": state_dict, "optimizer": optimizer.state_dict()}.
LEGACY_STATE_FILE = "state.pt"
_DCP_METADATA = ".metadata"


class ShardedStateError(RuntimeError):
    """A sharded save or load failed on some worker; str() names the first that failed, and why, in one line."""


@contextlib.contextmanager
def one_line_failures(action: str) -> Iterator[None]:
    """DCP's CheckpointException (a BaseException, with every rank's traceback in its text) as a ShardedStateError."""
    try:
        yield
    except CheckpointException as error:
        rank = min(error.failures)
        raise ShardedStateError(f"{action} failed on rank {rank}: {one_line(error.failures[rank][0])}") from None


def _storage_writer(location: Location) -> dict[str, Any]:
    if location.is_local:
        return {"checkpoint_id": location.path}
    return {"storage_writer": FsspecWriter(location.uri)}


def _storage_reader(location: Location) -> dict[str, Any]:
    if location.is_local:
        return {"checkpoint_id": location.path}
    return {"storage_reader": FsspecReader(location.uri)}


def training_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Model and optimizer state keyed by parameter name (no DDP prefix), as this worker holds it."""
    model_state, optimizer_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optimizer": optimizer_state}


def save(
    directory: Location,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    process_group: dist.ProcessGroup | None = None,
) -> None:
    """Every worker writes its part into directory/shards and returns once all have (a collective)."""
    with one_line_failures(f"saving {directory.uri}"):
        dcp.save(
            training_state(model, optimizer),
            process_group=process_group,
            **_storage_writer(directory.child(SHARDS_DIR)),
        )


@dataclass(frozen=True)
class AsyncSave:
    """A save in flight. `staged`: this worker's state is copied to host memory, and the model and optimizer may
    change again (until then an optimizer step must wait). `written`: done on every worker once its files are
    written, and on rank 0 once the checkpoint's metadata is too, which is after every worker's files; a failed
    write raises from its result() (wrap that in one_line_failures)."""

    staged: Future[None]
    written: Future[Any]


def host_stager() -> DefaultStager:
    """Copies state to host memory in a thread of its own, into buffers it keeps from one save to the next; one per
    run, closed at its end. On a GPU the copies go through pinned memory without blocking the compute stream."""
    gpu = torch.cuda.is_available()
    return DefaultStager(
        StagingOptions(
            use_pinned_memory=gpu, use_shared_memory=False, use_async_staging=True, use_non_blocking_copy=gpu
        )
    )


def save_async(
    directory: Location,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    process_group: dist.ProcessGroup,
    stager: DefaultStager,
) -> AsyncSave:
    """Copy this worker's part to host memory and write it, both in threads: training goes on at once, and only its
    next optimizer step waits for the copy (`AsyncSave.staged`).

    process_group must not be the one training uses: its collectives run from the writing thread, while training's
    own run from the main one.
    """
    response = dcp.async_save(
        training_state(model, optimizer),
        process_group=process_group,
        async_stager=stager,
        **_storage_writer(directory.child(SHARDS_DIR)),
    )
    assert isinstance(response, AsyncSaveResponse), "a stager that copies in a thread gives both futures"
    return AsyncSave(staged=response.staging_completion, written=response.upload_completion)


def restore(
    directory: Location,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    process_group: dist.ProcessGroup | None = None,
) -> None:
    """Load a checkpoint's state into model and optimizer, resharded to this run's workers; every worker calls it.

    A failure to read raises on every worker alike (DCP gathers each worker's outcome), so all pass over the same
    checkpoint.
    """
    shards = directory.child(SHARDS_DIR)
    if exists(shards.child(_DCP_METADATA)):
        state = training_state(model, optimizer)
        with one_line_failures(f"loading {directory.uri}"):
            dcp.load(state, process_group=process_group, **_storage_reader(shards))
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        return
    legacy = read_torch(directory.child(LEGACY_STATE_FILE))
    set_state_dict(
        model,
        optimizer,
        model_state_dict=legacy["model"],
        optim_state_dict=_named_optimizer_state(legacy["optimizer"], model),
        options=StateDictOptions(full_state_dict=True),
    )


def _named_optimizer_state(state: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """torch.optim's own state_dict, which numbers the parameters in the order the optimizer got them (the model's
    parameters() then), keyed by parameter name instead, as set_state_dict takes a whole one."""
    names = [_bare_name(name) for name, _ in model.named_parameters()]
    return {
        "state": {names[int(index)]: value for index, value in state["state"].items()},
        "param_groups": [
            group | {"params": [names[int(i)] for i in group["params"]]} for group in state["param_groups"]
        ],
    }


def _bare_name(name: str) -> str:
    return name.removeprefix("module.")


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state on the CPU of rank 0 (other ranks get an empty dict); every worker calls it."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
