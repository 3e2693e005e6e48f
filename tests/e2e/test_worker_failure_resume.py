"""A real Ray Train run on two CPU workers survives the loss of a worker process by resuming from its checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bigmodel.api.job import BigModelJobSpec
from bigmodel.runtime.artifacts import load_model
from bigmodel.runtime.checkpoints import CheckpointStore
from bigmodel.runtime.driver import run_training
from bigmodel.runtime.tasks import build_model_from_config
from tests.support.train_workers import kill_a_train_worker_when

pytestmark = pytest.mark.e2e

EVERY_STEPS = 10


def _spec() -> BigModelJobSpec:
    return BigModelJobSpec.model_validate(
        {
            "workload": {
                "builtin": {
                    "task": "gpt",
                    "maxSteps": 120,
                    "batchSize": 8,
                    "learningRate": 0.002,
                    "gpt": {"layers": 2, "heads": 2, "embedDim": 64, "contextLength": 64, "corpusMegabytes": 0.5},
                }
            },
            "workers": {"replicas": 2},
            "checkpoint": {"everySteps": EVERY_STEPS, "keepLast": 2},
            "failurePolicy": {"maxWorkerFailures": 2},
        },
        by_alias=True,
    )


def test_killed_worker_resumes_from_latest_checkpoint(ray_cluster: str, tmp_path: Path) -> None:
    spec = _spec()
    store = CheckpointStore(str(tmp_path), keep_last=2)

    def second_checkpoint() -> int | None:
        latest = store.latest()
        return latest.step if latest is not None and latest.step >= 2 * EVERY_STEPS else None

    with kill_a_train_worker_when(second_checkpoint) as kills:
        result = run_training(
            "resume-test", spec, str(tmp_path), resources_per_worker={"CPU": 1}, progress_interval_s=0.0
        )

    assert kills, "no Ray Train worker process was found and killed after the second checkpoint"
    attempts = result.progress.attempts
    assert len(attempts) == 2, f"expected one restart of the worker group after the kill, got attempts {attempts}"
    resumed = attempts[1].resumed_from_step
    assert resumed >= 2 * EVERY_STEPS, f"the restarted run began at step {resumed}, not from the checkpoint"
    assert resumed % EVERY_STEPS == 0, f"resumed at step {resumed}, which is not a checkpoint step"
    redone = result.progress.steps_trained_twice()
    assert redone <= EVERY_STEPS, f"{redone} steps were trained twice, more than the checkpoint interval"

    assert result.steps == result.total_steps == 120, "the run did not finish its planned steps"
    assert result.checkpoint is not None and result.checkpoint.step == 120, "the final checkpoint is missing"
    assert len(store.list()) == 2, "keepLast: 2 was not honoured"

    model, config = load_model(result.model_uri)
    rebuilt = build_model_from_config(config)
    rebuilt.load_state_dict(model.state_dict())
    tokens = torch.randint(0, 256, (1, 16))
    torch.testing.assert_close(rebuilt(tokens), model(tokens))
