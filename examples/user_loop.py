"""Your own Ray Train loop as a BigModelJob runs it (`examples/user-loop.yaml`): a small regression MLP.

It shows what a loop needs to be as well looked after as a built-in task: it resumes from `ray.train.get_checkpoint()`
and reports through `bigmodel.runtime.user_loop` (`progress` every step, `report` with each checkpoint), which gives `bigmodel train` and the job's status its
progress, ETA, loss, throughput and checkpoints. The data is made up from a fixed seed: nothing to download.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import ray.train
import ray.train.torch
import torch
from torch import nn

from bigmodel.runtime.user_loop import progress, report

FEATURES = 8
STATE_FILE = "state.pt"


def _data(samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """y = a fixed nonlinear function of x, plus a little noise: every rank makes the same set."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, FEATURES, generator=generator)
    weights = torch.randn(FEATURES, 1, generator=generator)
    y = torch.tanh(x @ weights) + 0.05 * torch.randn(samples, 1, generator=generator)
    return x, y


def train(config: dict) -> None:
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    epochs, batch_size = int(config.get("epochs", 4)), int(config.get("batchSize", 32))
    every = int(config.get("checkpointEverySteps", 10))
    x, y = _data(int(config.get("samples", 2048)), int(config.get("seed", 0)))
    # Each rank trains on its own shard; the step plan is the same on all of them.
    x, y = x[rank::world], y[rank::world]
    steps_per_epoch = len(x) // batch_size
    total_steps = epochs * steps_per_epoch

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(FEATURES, 32), nn.ReLU(), nn.Linear(32, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=float(config.get("learningRate", 0.01)))
    step = 0
    resumed = ray.train.get_checkpoint()
    if resumed is not None:
        with resumed.as_directory() as directory:
            state = torch.load(Path(directory) / STATE_FILE)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
    model = ray.train.torch.prepare_model(model)

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
            checkpoint = None
            if rank == 0:  # one copy of the weights: every rank holds the same
                state = {"model": model.module.state_dict() if world > 1 else model.state_dict()}
                torch.save(state | {"optimizer": optimizer.state_dict(), "step": step}, Path(directory) / STATE_FILE)
                checkpoint = ray.train.Checkpoint.from_directory(directory)
            report({"loss": loss.item()}, checkpoint, **plan, samples=batch_size)
