"""The per-worker training loop of the built-in tasks, run by Ray Train on every worker.

Every start of the loop (the first, and each restart of the worker group after a failure) resumes
from the latest completed checkpoint in storage, so a failure costs at most one checkpoint interval,
whatever the number of workers that wrote it; a preemption costs none (`interruptions`).

A step is the same whatever the number of workers that take it: `replicas` x `gradientAccumulationSteps`
micro-batches of `batchSize`, in an order fixed by the seed and the epoch alone, dealt out to the workers in turn. An
elastic run on fewer workers than replicas gives each more micro-batches to accumulate, so its global batch, its
data order and its learning-rate schedule stay those of the full run.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict

from bigmodel.api.job import BuiltinWorkload, TrainingSpec
from bigmodel.runtime import sharded_state, sharding
from bigmodel.runtime.artifacts import export_model
from bigmodel.runtime.checkpointing import Checkpointing
from bigmodel.runtime.checkpoints import CheckpointInfo, CheckpointStore
from bigmodel.runtime.interruptions import Interruptions
from bigmodel.runtime.progress import ProgressEvent, percent_and_eta
from bigmodel.runtime.schedule import learning_rate_at
from bigmodel.runtime.tasks import TrainingTask, make_task


class LoopSettings(BaseModel):
    """Everything a worker needs to know, sent from the driver as plain data."""

    model_config = ConfigDict(extra="forbid")

    workload: BuiltinWorkload
    training: TrainingSpec = TrainingSpec()
    storage: str
    replicas: int = 1
    """The workers the global batch is made for (spec.workers.replicas); an elastic run may have fewer."""
    head_node: str | None = None
    """The driver's Ray node: when it is being drained, the run checkpoints too."""
    worker_resources: dict[str, float] | None = None
    """What one worker takes of a Ray node, for an elastic run to see room for one more; None: not elastic."""
    keep_last: int
    every_steps: int | None
    every_epochs: int | None
    async_save: bool = False
    progress_interval_s: float = 1.0


class StepPlan(BaseModel):
    """How many steps the run has and when it checkpoints: the same on every rank."""

    steps_per_epoch: int
    total_steps: int
    every_steps: int | None
    every_epochs: int | None

    def epoch_of(self, step: int) -> int:
        return min(step // self.steps_per_epoch, max(0, (self.total_steps - 1) // self.steps_per_epoch))

    def checkpoint_due(self, step: int) -> bool:
        """After `step` optimizer steps, is a checkpoint due? The last step always saves."""
        if step >= self.total_steps:
            return True
        if self.every_steps and step % self.every_steps == 0:
            return True
        epoch_done = step % self.steps_per_epoch == 0
        every_epochs = self.every_epochs or (None if self.every_steps else 1)
        return bool(epoch_done and every_epochs and (step // self.steps_per_epoch) % every_epochs == 0)


def micro_batches_per_step(settings: LoopSettings) -> int:
    return settings.replicas * settings.training.gradient_accumulation_steps


def plan_steps(settings: LoopSettings, samples: int) -> StepPlan:
    workload = settings.workload
    accumulation = settings.training.gradient_accumulation_steps
    steps_per_epoch = samples // (workload.batch_size * micro_batches_per_step(settings))
    if steps_per_epoch < 1:
        times = f" x {accumulation} accumulated" if accumulation > 1 else ""
        raise ValueError(
            f"batchSize {workload.batch_size} x {settings.replicas} workers{times} is larger than the {samples} "
            "training samples"
        )
    total = workload.epochs * steps_per_epoch
    if workload.max_steps:
        total = min(total, workload.max_steps)
    return StepPlan(
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        every_steps=settings.every_steps,
        every_epochs=settings.every_epochs,
    )


def _uses_bf16(precision: str, device: torch.device) -> bool:
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def _autocast(bf16: bool, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def _distribute(
    model: torch.nn.Module, task: TrainingTask, training: TrainingSpec, bf16: bool, device: torch.device
) -> torch.nn.Module:
    """The model as this worker trains it: wrapped in DDP, or sharded with FSDP2 (bf16 by its mixed-precision
    policy, which then replaces autocast)."""
    blocks = task.blocks(model)
    if training.strategy == "fsdp":
        return sharding.shard(
            model.to(device),
            blocks=blocks,
            bf16=bf16,
            activation_checkpointing=training.activation_checkpointing,
            compile=training.compile,
        )
    sharding.prepare_blocks(
        model, blocks, activation_checkpointing=training.activation_checkpointing, compile=training.compile
    )
    return ray.train.torch.prepare_model(model)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(item, device) for item in batch)
    return batch


class _Throughput:
    """Samples and tokens per second over all workers, measured between two reports."""

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self._reset()

    def _reset(self) -> None:
        self._start = time.perf_counter()
        self._samples = 0
        self._tokens = 0
        self._losses: list[float] = []

    def add(self, samples: int, tokens: int, loss: float) -> None:
        self._samples += samples
        self._tokens += tokens
        self._losses.append(loss)

    def take(self) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        figures = {
            "loss": sum(self._losses) / max(len(self._losses), 1),
            "samples_per_second": self._samples * self.world_size / elapsed,
        }
        if self._tokens:
            figures["tokens_per_second"] = self._tokens * self.world_size / elapsed
        self._reset()
        return figures


def steps(samples: int, settings: LoopSettings, plan: StepPlan, start: int) -> Iterator[tuple[int, list[list[int]]]]:
    """(epoch, the micro-batches of the whole step) for each step left, from `start`: the same on every rank, and
    for any number of workers."""
    micro, per_step = settings.workload.batch_size, micro_batches_per_step(settings)
    step = start
    while step < plan.total_steps:
        epoch = plan.epoch_of(step)
        first = epoch * plan.steps_per_epoch
        last = min(plan.steps_per_epoch, plan.total_steps - first)
        order = torch.randperm(samples, generator=torch.Generator().manual_seed(settings.workload.seed + epoch))
        for index in range(step - first, last):
            taken = order[index * per_step * micro : (index + 1) * per_step * micro].tolist()
            yield epoch, [taken[j * micro : (j + 1) * micro] for j in range(per_step)]
        step = first + last


def dealt(micro_batches: list[list[int]], rank: int, world: int) -> list[list[int] | None]:
    """This rank's share of a step's micro-batches, dealt out in turn, padded with None to as many as any rank
    gets: every rank runs the same number of forward and backward passes, which sharded training requires."""
    mine: list[list[int] | None] = list(micro_batches[rank::world])
    return mine + [None] * (math.ceil(len(micro_batches) / world) - len(mine))


class _Run:
    """One start of the loop on one rank: the model and optimizer resumed from the latest checkpoint."""

    def __init__(self, settings: LoopSettings, recorder: Any) -> None:
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.settings = settings
        self.recorder = recorder if self.rank == 0 else None
        self.device = ray.train.torch.get_device()
        workload, training = settings.workload, settings.training
        self.task = make_task(workload)
        self.dataset = self.task.dataset()
        self.plan = plan_steps(settings, len(self.dataset))  # type: ignore[arg-type]

        torch.manual_seed(workload.seed)
        bf16 = _uses_bf16(workload.precision, self.device)
        self.autocast = bf16 and training.strategy == "ddp"
        self.model = _distribute(self.task.build_model(), self.task, training, bf16, self.device)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=workload.learning_rate, fused=self.device.type == "cuda"
        )
        self.checkpoints = Checkpointing(
            CheckpointStore(settings.storage, keep_last=settings.keep_last),
            rank=self.rank,
            async_save=settings.async_save,
            on_complete=self._saved,
        )
        # A group of its own: an async save runs the checkpoint group's collectives from its writing thread, and two
        # threads' collectives on one group would pair up differently on different ranks.
        self.interruptions = Interruptions(
            dist.new_group(backend="gloo"),
            {ray.get_runtime_context().get_node_id(), *([settings.head_node] if settings.head_node else [])},
            self._room_for_another_worker if self.rank == 0 and settings.worker_resources else None,
        )
        resume = self.checkpoints.resume(self.model, self.optimizer)
        self.skipped = resume.skipped
        self.step = resume.checkpoint.step if resume.checkpoint else 0
        self.state_bytes: int | None = None
        self._first_step = self.step
        self._started = time.monotonic()
        self.attempt = ray.get(self.recorder.begin_attempt.remote(self.step, self.world)) if self.recorder else 0

    def _room_for_another_worker(self) -> bool:
        if self.world >= self.settings.replicas or not self.settings.worker_resources:
            return False
        free = ray.available_resources()
        return all(free.get(name, 0.0) >= amount for name, amount in self.settings.worker_resources.items())

    def progress(self) -> dict[str, float]:
        """Fraction of the planned steps done and, once this attempt has a speed, the seconds left."""
        done, elapsed = self.step - self._first_step, time.monotonic() - self._started
        _, eta = percent_and_eta(self.step, self.plan.total_steps, done / elapsed if done > 0 else None)
        figures = {"progress": self.step / self.plan.total_steps}
        if eta is not None:
            figures["eta_seconds"] = float(eta)
        if self.state_bytes is not None:
            figures["state_bytes_per_worker"] = float(self.state_bytes)
        return figures

    def emit(self, kind: str, figures: dict[str, float], *, step: int | None = None, **extra: Any) -> None:
        if self.recorder is None:
            return
        step = self.step if step is None else step
        event = ProgressEvent(
            kind=kind,  # type: ignore[arg-type]
            step=step,
            total_steps=self.plan.total_steps,
            epoch=self.plan.epoch_of(step),
            epochs=self.settings.workload.epochs,
            attempt=self.attempt,
            metrics=figures | self.progress(),
            **extra,
        )
        self.recorder.record.remote(event)

    def train_step(self, micro_batches: list[list[int]]) -> tuple[int, int, float]:
        """One optimizer step over the step's micro-batches, this worker's share of them accumulated; returns the
        samples and tokens it trained on and its mean loss."""
        training = self.settings.training
        share = dealt(micro_batches, self.rank, self.world)
        # The gradient reduction averages over the workers: each micro-batch's loss counts 1/len(micro_batches) of
        # the step's. A padding pass (None) repeats one of this worker's own micro-batches with no weight.
        weight = self.world / len(micro_batches)
        samples = tokens = real = 0
        total_loss = torch.zeros((), device=self.device)
        for number, chunk in enumerate(share, start=1):
            indices = chunk if chunk is not None else share[0]
            assert indices is not None
            batch = _to_device(torch.utils.data.default_collate([self.dataset[i] for i in indices]), self.device)
            with sharding.gradient_sync(self.model, enabled=number == len(share)):
                with _autocast(self.autocast, self.device):
                    loss = self.task.loss(self.model, batch)
                (loss * (weight if chunk is not None else 0.0)).backward()
            if chunk is None:
                continue
            total_loss += loss.detach()
            real += 1
            samples += self.task.batch_size_of(batch)
            tokens += self.task.tokens_in(batch)
        if training.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), training.max_grad_norm)
        rate = learning_rate_at(
            self.step, peak=self.settings.workload.learning_rate, total_steps=self.plan.total_steps, training=training
        )
        for group in self.optimizer.param_groups:
            group["lr"] = rate
        self.checkpoints.before_update()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self.state_bytes is None:  # the optimizer's state exists from its first step
            self.state_bytes = sharding.state_bytes(self.model, self.optimizer)
        return samples, tokens, float(total_loss) / real

    def checkpoint(self, epoch: int, figures: dict[str, float]) -> None:
        """Every worker writes its part; the checkpoint is announced once it is complete (`_saved`)."""
        self.checkpoints.save(self.model, self.optimizer, step=self.step, epoch=epoch, metrics=figures)

    def _saved(self, saved: CheckpointInfo, stall_s: float) -> None:
        self.emit(
            "checkpoint",
            saved.metrics | {"checkpoint_stall_seconds": stall_s},
            step=saved.step,
            checkpoint_uri=saved.uri,
        )

    def end_to_grow(self) -> None:
        """The checkpoint is written: this attempt ends, for the driver to start the run on more workers."""
        self.checkpoints.close()
        self.interruptions.close()
        if self.recorder is not None:
            ray.get(self.recorder.ask_to_grow.remote())

    def finish(self, figures: dict[str, float]) -> None:
        """The last checkpoint is written; the whole model is gathered once, and rank 0 scores it on held-out data
        and exports it for serving."""
        self.checkpoints.close()
        self.interruptions.close()
        state = sharded_state.full_model_state(self.model)
        if self.rank != 0:
            return
        model = self.task.build_model()
        model.load_state_dict(state)
        model.to(self.device)
        final = figures | self.task.evaluate(model)
        uri = export_model(self.settings.storage, model, self.task.model_config(), final)
        self.emit("done", final, model_uri=uri)


def builtin_train_loop(config: dict[str, Any]) -> None:
    settings = LoopSettings.model_validate(config["settings"])
    run = _Run(settings, config.get("recorder"))
    run.emit("resume", {}, skipped_checkpoints=tuple((s.uri, s.reason) for s in run.skipped))
    throughput = _Throughput(run.world)
    figures: dict[str, float] = {}
    last_emit = time.monotonic()
    run.model.train()
    for epoch, micro_batches in steps(len(run.dataset), settings, run.plan, run.step):  # type: ignore[arg-type]
        throughput.add(*run.train_step(micro_batches))
        run.checkpoints.poll()
        interruption = run.interruptions.agreed() if run.step < run.plan.total_steps else None
        if run.plan.checkpoint_due(run.step) or interruption is not None:
            figures = throughput.take()
            run.checkpoint(epoch, figures)
            last_emit = time.monotonic()
            if interruption is not None:
                run.checkpoints.wait()
                if interruption.kind == "growth":
                    run.end_to_grow()
                    return
                run.interruptions.wait_out(interruption)
        elif time.monotonic() - last_emit >= settings.progress_interval_s:
            figures = throughput.take()
            run.emit("step", figures)
            last_emit = time.monotonic()
    run.finish(figures)
