"""Training throughput of the bigmodel runtime against plain PyTorch DDP or FSDP2, measured in one run.

Both sides train the same built-in task with the same model, per-worker batch, worker count, backend
(gloo on CPU, NCCL on GPU), threads per worker and strategy. The runtime side is the real Ray Train run
that `bigmodel train` does (with `training: {strategy: fsdp}` for --strategy fsdp); the baseline is
torch.distributed with a DistributedSampler DataLoader, the way a plain DDP script is written, or, with
fsdp, a plain FSDP2 script: `fully_shard` on each transformer block, then on the root. Throughput is
taken over the steady part of each run (after warm-up, before the final checkpoint and export), so
start-up costs of either side are left out.

    python -m bench.train_throughput                 # gpt task, DDP, 2 workers, CPU
    python -m bench.train_throughput --strategy fsdp
    python -m bench.train_throughput --task digits --steps 600
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import ray
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from bench import bench_parser
from bigmodel.api.job import BigModelJobSpec, BuiltinWorkload
from bigmodel.runtime.driver import run_training
from bigmodel.runtime.embedded import embedded_ray
from bigmodel.runtime.progress import ProgressSnapshot
from bigmodel.runtime.tasks import make_task

TASK_OPTIONS = {
    "gpt": {"gpt": {"layers": 2, "heads": 4, "embedDim": 128, "contextLength": 128, "corpusMegabytes": 2}},
    "digits": {"digits": {"hiddenSize": 512}},
}


def workload(task: str, steps: int, batch_size: int) -> BuiltinWorkload:
    return BuiltinWorkload.model_validate(
        {"task": task, "epochs": 1000, "maxSteps": steps, "batchSize": batch_size, **TASK_OPTIONS[task]},
        by_alias=True,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wrap_ddp(model: torch.nn.Module) -> torch.nn.Module:
    return DistributedDataParallel(model)


def _wrap_fsdp(model: torch.nn.Module) -> torch.nn.Module:
    """One FSDP unit per transformer block, then the root for the rest, as the FSDP2 docs shard a transformer."""
    # The digits MLP has no blocks: the root is its only unit, as in the runtime.
    for block in getattr(model, "blocks", ()):
        fully_shard(block)
    fully_shard(model)
    return model


@dataclass(frozen=True)
class Baseline:
    """The plain script of one strategy: the two differ only in how the model is wrapped."""

    name: str
    wrap: Callable[[torch.nn.Module], torch.nn.Module]
    goal: float
    """The least runtime/baseline throughput ratio the runtime should reach."""


BASELINES = {"ddp": Baseline("plain DDP", _wrap_ddp, 0.90), "fsdp": Baseline("plain FSDP2", _wrap_fsdp, 0.95)}


def _baseline_worker(rank: int, world: int, port: int, spec: dict, strategy: str, warmup: int, results: dict) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    work = BuiltinWorkload.model_validate(spec)
    task = make_task(work)
    torch.manual_seed(work.seed)
    model = BASELINES[strategy].wrap(task.build_model())
    optimizer = torch.optim.AdamW(model.parameters(), lr=work.learning_rate)
    dataset = task.dataset()
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, seed=work.seed, drop_last=True)
    loader = DataLoader(dataset, batch_size=work.batch_size, sampler=sampler, drop_last=True)
    steps, samples, started = 0, 0, 0.0
    epoch = 0
    while steps < work.max_steps:
        sampler.set_epoch(epoch)
        for batch in loader:
            loss = task.loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
            if steps == warmup:
                dist.barrier()
                started = time.perf_counter()
            elif steps > warmup:
                samples += task.batch_size_of(batch)
            if steps >= work.max_steps:
                break
        epoch += 1
    dist.barrier()
    if rank == 0:
        results["samples_per_second"] = samples * world / (time.perf_counter() - started)
    dist.destroy_process_group()


def plain_torch(work: BuiltinWorkload, workers: int, warmup: int, strategy: str) -> float:
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(
            _baseline_worker,
            args=(workers, _free_port(), work.model_dump(mode="json"), strategy, warmup, results),
            nprocs=workers,
            join=True,
        )
        return float(results["samples_per_second"])


def bigmodel_runtime(work: BuiltinWorkload, workers: int, warmup: int, strategy: str) -> float:
    spec = BigModelJobSpec.model_validate(
        {
            "workload": {"builtin": work.model_dump(by_alias=True, exclude_none=True)},
            "workers": {"replicas": workers},
            "checkpoint": {"everySteps": work.max_steps},
            "training": {"strategy": strategy},
        },
        by_alias=True,
    )
    seen: list[tuple[int, float]] = []

    def on_progress(snapshot: ProgressSnapshot) -> None:
        event = snapshot.latest
        if event is not None and event.kind == "step" and (not seen or seen[-1][0] != event.step):
            seen.append((event.step, event.time))

    with tempfile.TemporaryDirectory() as storage:
        run_training(
            "bench",
            spec,
            storage,
            resources_per_worker={"CPU": 1},
            on_progress=on_progress,
            progress_interval_s=0.25,
        )
    steady = [(step, at) for step, at in seen if step >= warmup]
    if len(steady) < 2:
        raise SystemExit("the run was too short to measure: raise --steps")
    (first_step, first_at), (last_step, last_at) = steady[0], steady[-1]
    return (last_step - first_step) * work.batch_size * workers / (last_at - first_at)


def main() -> None:
    parser = bench_parser("bench.train_throughput", __doc__)
    parser.add_argument("--task", choices=sorted(TASK_OPTIONS), default="gpt")
    parser.add_argument("--strategy", choices=sorted(BASELINES), default="ddp")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    work = workload(args.task, args.steps, args.batch_size)
    baseline = plain_torch(work, args.workers, args.warmup, args.strategy)
    with embedded_ray(num_cpus=args.workers):
        runtime = bigmodel_runtime(work, args.workers, args.warmup, args.strategy)
    print(
        f"task={args.task} strategy={args.strategy} workers={args.workers} batch/worker={args.batch_size} "
        f"steps={args.steps} backend=gloo"
    )
    print(f"{BASELINES[args.strategy].name:<18} {baseline:10.1f} samples/s")
    print(f"bigmodel runtime   {runtime:10.1f} samples/s")
    print(f"ratio              {runtime / baseline:10.3f}   (goal >= {BASELINES[args.strategy].goal:.2f})")
    ray.shutdown()


if __name__ == "__main__":
    main()
