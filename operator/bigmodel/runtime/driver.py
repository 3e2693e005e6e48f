"""The Ray Train driver: runs one BigModelJob's workload on the Ray cluster this process is connected to.

The same driver runs in the embedded local cluster of `bigmodel train` and as the Ray job the operator
submits in Kubernetes; only the resources each worker asks for differ.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import ray
from ray.train import CheckpointConfig, FailureConfig, Result, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from bigmodel.api.job import BigModelJobSpec
from bigmodel.api.wire import PROGRESS_RECORDER_ENV, STORAGE_ENV
from bigmodel.runtime.checkpoints import CheckpointInfo, CheckpointStore
from bigmodel.runtime.elastic import fit_elastically
from bigmodel.runtime.interruptions import drain_this_node
from bigmodel.runtime.progress import ProgressSnapshot, start_recorder
from bigmodel.runtime.ray_checkpoints import remove_unkept
from bigmodel.runtime.report_forwarding import ReportForwarder
from bigmodel.runtime.storage import StorageUnwritable, probe_writable
from bigmodel.runtime.tasks import make_task
from bigmodel.runtime.train_loop import LoopSettings, builtin_train_loop, plan_steps


class TrainingFailed(RuntimeError):
    """The run failed beyond its worker-failure budget, or the workload itself raised."""


class TrainingCannotRun(TrainingFailed):
    """The run could not start, and would not on any cluster: the storage, the loop or the workload is wrong."""


@dataclass(frozen=True)
class TrainingResult:
    steps: int
    total_steps: int
    epochs: int
    metrics: dict[str, float]
    checkpoint: CheckpointInfo | None
    model_uri: str | None
    progress: ProgressSnapshot
    elapsed_s: float


ProgressCallback = Callable[[ProgressSnapshot], None]


def resolve_storage(storage: str) -> str:
    """Local paths become absolute so every Ray worker process writes to the same place."""
    if "://" in storage:
        return storage
    return str(Path(storage).expanduser().resolve())


def _import_function(reference: str) -> Callable[[dict[str, Any]], Any]:
    module_name, _, function_name = reference.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise TrainingCannotRun(f"workload.entrypoint.function {reference!r} cannot be imported: {error}") from error
    if not callable(function):
        raise TrainingCannotRun(f"workload.entrypoint.function {reference!r} is not callable")
    return function


def _check_plan(settings: LoopSettings) -> None:
    """Refuse a run whose data cannot fill one step before any worker starts, rather than fail on every retry."""
    try:
        plan_steps(settings, len(make_task(settings.workload).dataset()))  # type: ignore[arg-type]
    except ValueError as error:
        raise TrainingCannotRun(f"spec.workload.builtin: {error}") from error


def _root_cause(error: BaseException) -> str:
    # Ray Train's WorkerGroupError keeps each rank's exception apart from its message.
    failures: dict[int, BaseException] = getattr(error, "worker_failures", None) or {}
    if failures:
        rank = min(failures)
        return f"{type(error).__name__} on rank {rank}: {_root_cause(failures[rank])}"
    while error.__cause__ is not None:
        error = error.__cause__
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {first_line}"


class _Poller:
    """Calls back with the recorder's snapshot at an interval, from a thread, while the run goes on."""

    def __init__(self, recorder: Any, callback: ProgressCallback | None, interval_s: float) -> None:
        self._recorder = recorder
        self._callback = callback
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bigmodel-progress", daemon=True)

    def __enter__(self) -> _Poller:
        if self._callback is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        assert self._callback is not None
        while not self._stop.wait(self._interval_s):
            self._callback(ray.get(self._recorder.snapshot.remote()))


def _fit_interruptibly(trainer: TorchTrainer) -> Result:
    """trainer.fit() in a helper thread, so Ctrl-C in the main thread reaches the caller at once.

    In the main thread Ray Train would take SIGINT over with its own graceful abort, which ends the
    process with exit code 1 and no word of the checkpoint; the caller knows better what to say.
    """
    outcome: list[BaseException] = []
    results: list[Result] = []

    def fit() -> None:
        try:
            results.append(trainer.fit())
        except BaseException as error:  # handed to the main thread, which decides what it means
            outcome.append(error)

    thread = threading.Thread(target=fit, name="bigmodel-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(timeout=0.2)
    if outcome:
        raise outcome[0]
    return results[0]


def local_environment(spec: BigModelJobSpec, environ: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """What spec.env and spec.envFrom give the training processes where no pod does (`bigmodel train`), and a note
    for each reference that this machine cannot resolve.

    There is no Secret or ConfigMap here: a valueFrom entry takes its value from `environ` (the user's own
    environment, which the local Ray's processes inherit anyway), and envFrom adds nothing beyond it. In a cluster
    the pods carry all of it, so the driver there adds nothing.
    """
    env: dict[str, str] = {}
    notes: list[str] = []
    for index, item in enumerate(spec.env):
        if item.value_from is None:
            env[item.name] = item.value or ""
        elif item.name in environ:
            env[item.name] = environ[item.name]
        else:
            notes.append(
                f"spec.env[{index}]: {item.name} comes from {item.value_from.describe()} in a cluster; it is not set "
                "in your environment, so this run goes without it"
            )
    for index, source in enumerate(spec.env_from):
        notes.append(
            f"spec.envFrom[{index}]: the keys of {source.describe()} are read in a cluster only; this run sees your "
            "own environment"
        )
    return env, notes


def run_training(
    name: str,
    spec: BigModelJobSpec,
    storage: str,
    *,
    resources_per_worker: dict[str, float],
    env: Mapping[str, str] | None = None,
    on_progress: ProgressCallback | None = None,
    progress_interval_s: float = 0.5,
) -> TrainingResult:
    """Train `spec` to completion and return what it produced. Resumes from checkpoints in `storage`.

    `env` is added to the training processes' environment (`local_environment`); in a cluster they inherit their
    pod's, and nothing of spec.env travels through Ray.
    """
    workload = spec.workload
    if workload.command is not None:
        raise ValueError("a command workload is not a Ray Train run: use run_command")
    storage = resolve_storage(storage)
    try:
        probe_writable(storage)
    except StorageUnwritable as error:
        raise TrainingCannotRun(str(error)) from None
    recorder, recorder_name = start_recorder()
    runtime_env = dict(spec.runtime_env or {})
    runtime_env["env_vars"] = (
        runtime_env.get("env_vars", {}) | dict(env or {}) | {STORAGE_ENV: storage, PROGRESS_RECORDER_ENV: recorder_name}
    )

    fewest, most = spec.workers.worker_range()
    elastic = fewest < most
    if workload.builtin is not None:
        settings = LoopSettings(
            workload=workload.builtin,
            training=spec.training_or_default(),
            storage=storage,
            keep_last=spec.checkpoint.keep_last,
            every_steps=spec.checkpoint.every_steps,
            every_epochs=spec.checkpoint.every_epochs,
            async_save=spec.checkpoint.async_save,
            progress_interval_s=progress_interval_s,
            replicas=spec.workers.replicas,
            head_node=ray.get_runtime_context().get_node_id(),
            worker_resources=dict(resources_per_worker) if elastic else None,
        )
        _check_plan(settings)
        loop: Callable[[dict[str, Any]], Any] = builtin_train_loop
        loop_config: dict[str, Any] = {"settings": settings.model_dump(mode="json"), "recorder": recorder}
        callbacks: list[ReportForwarder] = []
    else:
        assert workload.entrypoint is not None
        loop = _import_function(workload.entrypoint.function)
        # The config is the user's own: the recorder reaches a user loop by name, through the environment
        # (`user_loop.report`), and what it reports to Ray Train alone is forwarded by Ray Train's controller.
        loop_config = dict(workload.entrypoint.config)
        callbacks = [ReportForwarder(recorder, storage)]

    # An elastic run's attempts are sized by the driver (`elastic`), each without retries of Ray Train's own.
    retries = (
        FailureConfig(max_failures=0, max_preemption_failures=0)
        if elastic
        else FailureConfig(max_failures=spec.failure_policy.max_worker_failures)
    )

    def fit_on(workers: int) -> Result:
        trainer = TorchTrainer(
            loop,
            train_loop_config=loop_config,
            # A hung collective fails its worker in minutes (the run then restarts from the checkpoint).
            torch_config=TorchConfig(timeout_s=spec.failure_policy.collective_timeout_seconds),
            scaling_config=ScalingConfig(
                num_workers=workers, use_gpu=spec.uses_gpu(), resources_per_worker=resources_per_worker
            ),
            run_config=RunConfig(
                name=name,
                storage_path=f"{storage}/ray" if "://" in storage else os.path.join(storage, "ray"),
                failure_config=retries,
                # The checkpoints a user loop hands to ray.train.report (ray_checkpoints removes those of failed
                # reports after the run); the built-in loop keeps its own (CheckpointStore).
                checkpoint_config=CheckpointConfig(num_to_keep=spec.checkpoint.keep_last),
                callbacks=callbacks,
                worker_runtime_env=runtime_env,
            ),
        )
        return _fit_interruptibly(trainer)

    started = time.monotonic()
    with _Poller(recorder, on_progress, progress_interval_s):
        try:
            if elastic:
                result = fit_elastically(
                    fit_on,
                    fewest=fewest,
                    most=most,
                    resources_per_worker=resources_per_worker,
                    max_failures=spec.failure_policy.max_worker_failures,
                    asked_to_grow=lambda: bool(ray.get(recorder.growth_asked.remote())),
                )
            else:
                result = fit_on(most)
        except Exception as error:  # Ray wraps worker errors in several layers; users need the innermost.
            raise TrainingFailed(_root_cause(error)) from error
    snapshot: ProgressSnapshot = ray.get(recorder.snapshot.remote())
    if workload.entrypoint is not None:
        snapshot = _finished(recorder, snapshot)
        remove_unkept(result)
    if on_progress is not None:
        on_progress(snapshot)
    done = snapshot.latest if snapshot.latest is not None and snapshot.latest.kind == "done" else None
    return TrainingResult(
        steps=snapshot.latest.step if snapshot.latest else 0,
        total_steps=snapshot.latest.total_steps if snapshot.latest else 0,
        epochs=snapshot.latest.epochs if snapshot.latest else 0,
        metrics=dict(done.metrics) if done else {},
        checkpoint=latest_checkpoint(spec, storage, snapshot),
        model_uri=done.model_uri if done else None,
        progress=snapshot,
        elapsed_s=time.monotonic() - started,
    )


def _finished(recorder: Any, snapshot: ProgressSnapshot) -> ProgressSnapshot:
    """A user loop's last report, marked done: the built-in loop says so itself once its model is exported, and a user
    loop that returned has no more to say. Taken after fit() returned: Ray Train's controller, which forwards the
    loop's reports (`report_forwarding`), has forwarded its last by then."""
    if snapshot.latest is None:
        return snapshot
    ray.get(recorder.record.remote(dataclasses.replace(snapshot.latest, kind="done")))
    return ray.get(recorder.snapshot.remote())


def latest_checkpoint(spec: BigModelJobSpec, storage: str, snapshot: ProgressSnapshot | None) -> CheckpointInfo | None:
    """The run's newest complete checkpoint: the built-in loop's from its store, a user loop's as it reported it to
    Ray Train (in `snapshot`, the run's progress as last seen)."""
    if spec.workload.builtin is not None:
        return CheckpointStore(resolve_storage(storage), keep_last=spec.checkpoint.keep_last).latest()
    return _last_reported_checkpoint(snapshot) if snapshot is not None else None


def checkpoint_before_stopping(spec: BigModelJobSpec, storage: str, poll_s: float = 0.5) -> CheckpointInfo | None:
    """Have the built-in loop save a checkpoint at its next step, as it does when its pod is preempted, and wait for
    it up to the job's terminationGracePeriodSeconds; returns it (None when none came in time). A user's loop knows
    of no drain."""
    store = CheckpointStore(resolve_storage(storage), keep_last=spec.checkpoint.keep_last)
    before = store.latest()
    grace = spec.termination_grace_period_seconds
    drain_this_node(grace, "bigmodel train is stopping")
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        latest = store.latest()
        if latest is not None and (before is None or latest.step > before.step):
            return latest
        time.sleep(poll_s)
    return None


def _last_reported_checkpoint(snapshot: ProgressSnapshot) -> CheckpointInfo | None:
    """The newest checkpoint a user loop reported to Ray Train, where Ray Train stored it."""
    if not snapshot.checkpoints:
        return None
    saved = snapshot.checkpoints[-1]
    return CheckpointInfo(
        uri=saved.checkpoint_uri or "",
        step=saved.step,
        epoch=saved.epoch,
        time=datetime.fromtimestamp(saved.time, tz=timezone.utc),
        metrics=dict(saved.metrics),
    )


def run_command(spec: BigModelJobSpec, storage: str, ray_address: str, env: Mapping[str, str] | None = None) -> int:
    """Run a command workload against the cluster at `ray_address`, with this process's environment plus `env`;
    returns its exit code."""
    assert spec.workload.command is not None
    command_env = os.environ | dict(env or {}) | {"RAY_ADDRESS": ray_address, STORAGE_ENV: resolve_storage(storage)}
    return subprocess.run(spec.workload.command, env=command_env, check=False).returncode
