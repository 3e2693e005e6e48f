"""How a model is spread over the workers of a run: DDP (a whole copy each) or FSDP2 (each holds 1/world).

For the built-in tasks and for a user's own Ray Train loop alike:

    from bigmodel.runtime.sharding import shard

    model = shard(model, blocks=model.layers, bf16=True, activation_checkpointing=True)
    optimizer = torch.optim.AdamW(model.parameters())  # made after shard(): it sees the shards

Each block becomes one FSDP unit (its parameters are gathered just before its forward and freed after it), and the
rest of the model (embeddings, final norm, head) one more. Needs the process group that Ray Train's TorchTrainer sets
up on every worker.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn
from torch.distributed._composable import checkpoint as checkpoint_activations
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel


def shard(
    model: nn.Module,
    *,
    blocks: Iterable[nn.Module] = (),
    bf16: bool = False,
    activation_checkpointing: bool = False,
    compile: bool = False,
) -> nn.Module:
    """The model sharded with FSDP2 over the default process group, on this worker's GPU (or the CPU without one).

    bf16: parameters are gathered and computed in bfloat16 while the sharded master copy, the gradients' reduction
    and the optimizer stay in float32 (the usual policy for training on GPUs).
    """
    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    )
    for block in prepare_blocks(model, blocks, activation_checkpointing=activation_checkpointing, compile=compile):
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def prepare_blocks(
    model: nn.Module, blocks: Iterable[nn.Module], *, activation_checkpointing: bool, compile: bool
) -> list[nn.Module]:
    """Activation checkpointing and torch.compile applied per block, in place: parameter names stay as they were, so
    checkpoints and exported models do not depend on these options. Without blocks, compile takes the whole model."""
    units = list(blocks)
    for block in units:
        if activation_checkpointing:
            checkpoint_activations(block)
        if compile:
            block.compile()
    if compile and not units:
        model.compile()
    return units


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Within it, a backward pass reduces gradients over the workers only if `enabled`: micro-batches before the last
    of an accumulated step keep theirs local, and the last one reduces the sum once."""
    if enabled:
        yield
    elif isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    elif isinstance(model, DistributedDataParallel):
        with model.no_sync():
            yield
    else:
        yield


def _local_bytes(tensor: torch.Tensor) -> int:
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
    return local.numel() * local.element_size()


def state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of parameters and optimizer state this worker holds: about 1/world of the whole under FSDP."""
    total = sum(_local_bytes(parameter) for parameter in model.parameters())
    for state in optimizer.state.values():
        total += sum(_local_bytes(value) for value in state.values() if isinstance(value, torch.Tensor))
    return total
