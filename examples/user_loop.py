"""Your own Ray Train loop as a BigModelJob runs it (`examples/user-loop.yaml`): a small regression MLP.

It shows what a loop needs to be as well looked after as a built-in task: it resumes from `ray.train.get_checkpoint()`
and reports through `bigmodel.runtime.user_loop` (`progress` every step, `report` with each checkpoint), which gives
`bigmodel train` and the job's status its progress, ETA, loss, throughput and checkpoints. The data is made up from a
fixed seed: nothing to download.

`strategy: fsdp` in its config (`examples/user-loop-fsdp.yaml`) shards the model over the workers with
`bigmodel.runtime.sharding.shard` instead of giving each a whole copy (`ray.train.torch.prepare_model`, DDP), and
either way it checkpoints with `bigmodel.runtime.sharded_state`: every worker writes and reads only its own part, and a
checkpoint written by N workers resumes on M.
"""

from __future__ import annotations

import tempfile

import ray.train
import ray.train.torch
import torch
from torch import nn

from bigmodel.runtime import sharded_state
from bigmodel.runtime.sharding import shard
from bigmodel.runtime.storage import resolve
from bigmodel.runtime.user_loop import progress, report

FEATURES = 8


def _data(samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """y = a fixed nonlinear function of x, plus a little noise: every rank makes the same set."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, FEATURES, generator=generator)
    weights = torch.randn(FEATURES, 1, generator=generator)
    y = torch.tanh(x @ weights) + 0.05 * torch.randn(samples, 1, generator=generator)
    return x, y


def _model() -> nn.Module:
    torch.manual_seed(0)  # the same initial weights on every rank
    return nn.Sequential(nn.Linear(FEATURES, 32), nn.ReLU(), nn.Linear(32, 1))


def _resume(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Load the checkpoint Ray Train resumes from, if any, on every rank; returns its step (0: from the start)."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as directory:
        # Each rank reads the parts it holds now, however many workers wrote them and under either strategy.
        sharded_state.restore(resolve(directory), model, optimizer)
    return int(checkpoint.get_metadata()["step"])  # `report` keeps the step there


def _checkpoint(directory: str, model: nn.Module, optimizer: torch.optim.Optimizer) -> ray.train.Checkpoint:
    """This rank's part of a checkpoint, written into `directory` (its own, temporary).

    Every rank writes its own part (rank 0 also the index of all of them), a collective: under FSDP its shards,
    under DDP a share of the tensors every rank holds alike. Ray Train copies every rank's files into the one
    checkpoint directory in storage.
    """
    sharded_state.save(resolve(directory), model, optimizer)
    return ray.train.Checkpoint.from_directory(directory)


def train(config: dict) -> None:
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    epochs, batch_size = int(config.get("epochs", 4)), int(config.get("batchSize", 32))
    every = int(config.get("checkpointEverySteps", 10))
    sharded = config.get("strategy", "ddp") == "fsdp"
    samples = int(config.get("samples", 2048))
    x, y = _data(samples, int(config.get("seed", 0)))
    # Each rank trains on its own shard; the step plan is the same on all of them (the smallest shard's). It depends
    # on the number of workers: a run resumed on more or fewer goes on from the checkpoint's step under the new plan.
    x, y = x[rank::world], y[rank::world]
    steps_per_epoch = samples // world // batch_size
    total_steps = epochs * steps_per_epoch

    model = _model()
    if sharded:
        # Each Linear one FSDP unit: its weights are gathered just before its forward and freed after it.
        model = shard(model, blocks=[model[0], model[2]])
    else:
        model = ray.train.torch.prepare_model(model)
    # Made after shard(): the optimizer must see the parameters as this rank holds them.
    optimizer = torch.optim.Adam(model.parameters(), lr=float(config.get("learningRate", 0.01)))
    step = _resume(model, optimizer)

    while step < total_steps:
        epoch, index = divmod(step, steps_per_epoch)
        batch = slice(index * batch_size, (index + 1) * batch_size)
        loss = nn.functional.mse_loss(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        plan = {"step": step, "total_steps": total_steps, "epoch": epoch, "epochs": epochs}
        if step % every and step < total_steps:
            # Every step to the live line; to Ray Train only with a checkpoint, which its report waits on.
            progress({"loss": loss.item()}, **plan, samples=batch_size)
            continue
        with tempfile.TemporaryDirectory() as directory:
            checkpoint = _checkpoint(directory, model, optimizer)
            report({"loss": loss.item()}, checkpoint, **plan, samples=batch_size)
