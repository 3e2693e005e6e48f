"""The two workloads beside the built-in tasks: a user train loop and a raw command."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from bigmodel.api.job import BigModelJobSpec
from bigmodel.runtime import sharded_state
from bigmodel.runtime.driver import TrainingFailed, TrainingResult, run_training
from bigmodel.runtime.storage import resolve
from examples import user_loop as user_loop_example
from tests.support.train_workers import kill_a_train_worker_when

pytestmark = pytest.mark.e2e

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def _python_path(directory: Path) -> dict[str, dict[str, str]]:
    """A runtimeEnv that puts `directory` before the workers' own PYTHONPATH (Ray expands `${...}` there), which may
    hold the bigmodel under test: a checkout run with PYTHONPATH rather than the installed package."""
    return {"env_vars": {"PYTHONPATH": f"{directory}{os.pathsep}${{PYTHONPATH}}"}}


def test_entrypoint_loop_runs_on_every_worker_with_its_config(ray_cluster: str, tmp_path: Path) -> None:
    spec = BigModelJobSpec.model_validate(
        {
            "workload": {"entrypoint": {"function": "user_loop:train", "config": {"lr": 0.1}}},
            "workers": {"replicas": 2},
            "runtimeEnv": _python_path(HERE),
        },
        by_alias=True,
    )
    result = run_training("user-loop", spec, str(tmp_path), resources_per_worker={"CPU": 1})
    # The loop reports to Ray Train alone, once, with no step: what Ray Train's controller heard reaches the result.
    assert (result.steps, result.metrics.get("sum")) == (1, 3.0), result
    records = sorted(json.loads(path.read_text())["rank"] for path in tmp_path.glob("rank-*.json"))
    assert records == [0, 1], f"the user loop did not run once per worker: {records}"
    record = json.loads((tmp_path / "rank-1.json").read_text())
    assert record["world"] == 2 and record["sum"] == 3.0, "the workers did not form one process group"
    assert record["lr"] == 0.1, "entrypoint.config did not reach the loop"


def test_a_user_loop_with_the_helper_resumes_after_a_worker_kill_and_reports_it(
    ray_cluster: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))  # the driver imports the example's loop too
    spec = BigModelJobSpec.model_validate(
        {
            "workload": {
                "entrypoint": {
                    "function": "examples.user_loop:train",
                    "config": {"epochs": 2, "samples": 1024, "checkpointEverySteps": 8},
                }
            },
            "workers": {"replicas": 2},
            "checkpoint": {"keepLast": 2},
            "failurePolicy": {"maxWorkerFailures": 2},
            "runtimeEnv": _python_path(ROOT),
        },
        by_alias=True,
    )
    # Ray Train writes its checkpoint manager's state once it registered a checkpoint, which a restart resumes from;
    # a checkpoint directory alone may be a report not yet taken.
    snapshot = tmp_path / "ray" / "killed" / "checkpoint_manager_snapshot.json"
    with kill_a_train_worker_when(snapshot.exists) as kills:
        result = run_training("killed", spec, str(tmp_path), resources_per_worker={"CPU": 1})

    assert kills, "no Ray Train worker was killed after the first checkpoint"
    attempts = result.progress.attempts
    assert len(attempts) == 2, f"expected one restart of the worker group, got attempts {attempts}"
    resumed = attempts[1].resumed_from_step
    assert resumed > 0 and resumed % 8 == 0, f"the restart began at step {resumed}, not at a checkpoint's"
    assert result.steps == result.total_steps == 32, result
    assert result.checkpoint is not None and result.checkpoint.step == 32, result.checkpoint
    kept = [path for path in (tmp_path / "ray" / "killed").glob("checkpoint_*") if path.is_dir()]
    assert len(kept) == 2, f"keepLast: 2, kept {kept}"


# DCP warns that it loads into one process, as the end of this test means it to.
@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_a_sharded_user_loop_resumes_its_checkpoint_on_more_workers(ray_cluster: str, tmp_path: Path) -> None:
    manifest = yaml.safe_load((ROOT / "examples/user-loop-fsdp.yaml").read_text())
    example = BigModelJobSpec.model_validate(manifest["spec"] | {"runtimeEnv": _python_path(ROOT)}, by_alias=True)
    assert example.workload.entrypoint is not None and example.workload.entrypoint.config["strategy"] == "fsdp"
    config = example.workload.entrypoint.config | {"samples": 512}  # 8 steps an epoch on 2 workers
    keep_last = example.checkpoint.keep_last

    def run(replicas: int, epochs: int) -> TrainingResult:
        spec = example.model_copy(deep=True)
        spec.workers.replicas = replicas
        spec.workload.entrypoint.config = config | {"epochs": epochs}
        # Half a CPU each: three workers fit the tests' 2-CPU cluster.
        return run_training("fsdp", spec, str(tmp_path), resources_per_worker={"CPU": 0.5})

    def kept() -> list[Path]:
        return sorted(path for path in (tmp_path / "ray" / "fsdp").glob("checkpoint_*") if path.is_dir())

    def shard_files(checkpoint: Path) -> list[str]:
        return sorted(path.name for path in (checkpoint / "shards").glob("*.distcp"))

    first = run(replicas=2, epochs=2)
    assert first.steps == first.total_steps == 16, first
    assert math.isfinite(first.metrics["loss"]), first.metrics
    assert len(kept()) == keep_last, f"keepLast {keep_last}, kept {kept()}"
    # Each worker wrote its own part, and Ray Train gathered them into the one checkpoint directory.
    assert shard_files(kept()[-1]) == ["__0_0.distcp", "__1_0.distcp"], kept()[-1]

    # On 3 workers an epoch is 5 steps (512 // 3 // 32): 5 epochs are 25, 9 of them after the checkpoint's 16.
    again = run(replicas=3, epochs=5)
    assert again.progress.attempts[0].resumed_from_step == 16, again.progress.attempts
    assert again.steps == again.total_steps == 25, again
    assert again.checkpoint is not None and again.checkpoint.step == 25, again.checkpoint
    assert math.isfinite(again.metrics["loss"]), again.metrics
    assert len(kept()) == keep_last, f"keepLast {keep_last}, kept {kept()}"
    assert shard_files(kept()[-1]) == ["__0_0.distcp", "__1_0.distcp", "__2_0.distcp"], kept()[-1]

    # The newest checkpoint holds the whole trained model: it loads into this one process too, and fits the data far
    # better than the model the loop starts from.
    model = user_loop_example._model()
    x, y = user_loop_example._data(config["samples"], 0)

    def loss() -> float:
        with torch.no_grad():
            return torch.nn.functional.mse_loss(model(x), y).item()

    untrained = loss()
    sharded_state.restore(resolve(str(kept()[-1])), model, torch.optim.Adam(model.parameters()))
    assert loss() < untrained / 2, f"the restored model's loss is {loss():.4f}, the untrained one's {untrained:.4f}"


def _failure_of_user_loop(function: str, config: dict[str, Any], tmp_path: Path, **failure_policy: int) -> str:
    """The one-line failure of a 2-worker run of a loop in tests/e2e/user_loop.py that no worker restart may absorb."""
    spec = BigModelJobSpec.model_validate(
        {
            "workload": {"entrypoint": {"function": f"user_loop:{function}", "config": config}},
            "workers": {"replicas": 2},
            "failurePolicy": {"maxWorkerFailures": 0} | failure_policy,
            "runtimeEnv": _python_path(HERE),
        },
        by_alias=True,
    )
    with pytest.raises(TrainingFailed) as failed:
        run_training(function, spec, str(tmp_path), resources_per_worker={"CPU": 1})
    return str(failed.value)


def test_a_failing_user_loop_is_reported_with_its_rank_and_its_own_error(ray_cluster: str, tmp_path: Path) -> None:
    message = _failure_of_user_loop("broken", {"lr": 0.1}, tmp_path)
    # Every rank fails the same way; which one Ray Train hears from first depends on timing (rank 1 when rank 0 is
    # slower to start), and the lowest rank it heard from is reported.
    assert re.match(r"WorkerGroupError on rank [01]: ", message), message
    assert "KeyError: 'learning_rate'" in message, message


def test_a_hung_collective_fails_its_run_within_the_collective_timeout(ray_cluster: str, tmp_path: Path) -> None:
    # The stuck rank sleeps far longer than the timeout: only the timeout can end the run in time.
    message = _failure_of_user_loop(
        "hangs_in_a_collective", {"sleepSeconds": 600}, tmp_path, collectiveTimeoutSeconds=10
    )
    assert re.match(r"WorkerGroupError on rank 0: ", message), message
    assert "timed out" in message.lower() or "timeout" in message.lower(), message


def test_batch_larger_than_the_data_fails_before_any_worker_starts(ray_cluster: str, tmp_path: Path) -> None:
    spec = BigModelJobSpec.model_validate(
        {"workload": {"builtin": {"task": "digits", "batchSize": 5000}}, "workers": {"replicas": 2}}, by_alias=True
    )
    with pytest.raises(TrainingFailed, match=r"spec\.workload\.builtin: batchSize 5000 x 2 workers is larger"):
        run_training("too-big", spec, str(tmp_path), resources_per_worker={"CPU": 1})


def test_command_workload_runs_against_the_embedded_cluster(tmp_path: Path) -> None:
    manifest = tmp_path / "command.yaml"
    manifest.write_text(
        "apiVersion: bigmodel.dev/v1alpha1\nkind: BigModelJob\nmetadata: {name: command}\n"
        'spec:\n  workload:\n    command: [python, -c, \'import os; print("address", os.environ["RAY_ADDRESS"])\']\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "bigmodel.cli", "train", str(manifest), "--storage", str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    assert "address " in result.stdout and "command exited with code 0" in result.stdout, result.stdout
