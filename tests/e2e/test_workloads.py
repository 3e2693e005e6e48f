"""The two workloads beside the built-in tasks: a user train loop and a raw command."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bigmodel.api.job import BigModelJobSpec
from bigmodel.runtime.driver import TrainingFailed, run_training

pytestmark = pytest.mark.e2e

HERE = Path(__file__).resolve().parent


def test_entrypoint_loop_runs_on_every_worker_with_its_config(ray_cluster: str, tmp_path: Path) -> None:
    spec = BigModelJobSpec.model_validate(
        {
            "workload": {"entrypoint": {"function": "user_loop:train", "config": {"lr": 0.1}}},
            "workers": {"replicas": 2},
            "runtimeEnv": {"env_vars": {"PYTHONPATH": str(HERE)}},
        },
        by_alias=True,
    )
    run_training("user-loop", spec, str(tmp_path), resources_per_worker={"CPU": 1})
    records = sorted(json.loads(path.read_text())["rank"] for path in tmp_path.glob("rank-*.json"))
    assert records == [0, 1], f"the user loop did not run once per worker: {records}"
    record = json.loads((tmp_path / "rank-1.json").read_text())
    assert record["world"] == 2 and record["sum"] == 3.0, "the workers did not form one process group"
    assert record["lr"] == 0.1, "entrypoint.config did not reach the loop"


def test_a_failing_user_loop_is_reported_with_its_rank_and_its_own_error(ray_cluster: str, tmp_path: Path) -> None:
    spec = BigModelJobSpec.model_validate(
        {
            "workload": {"entrypoint": {"function": "user_loop:broken", "config": {"lr": 0.1}}},
            "workers": {"replicas": 2},
            "failurePolicy": {"maxWorkerFailures": 0},
            "runtimeEnv": {"env_vars": {"PYTHONPATH": str(HERE)}},
        },
        by_alias=True,
    )
    with pytest.raises(TrainingFailed) as failed:
        run_training("broken-loop", spec, str(tmp_path), resources_per_worker={"CPU": 1})
    message = str(failed.value)
    # Every rank fails the same way; which one Ray Train hears from first depends on timing (rank 1 when rank 0 is
    # slower to start), and the lowest rank it heard from is reported.
    assert re.match(r"WorkerGroupError on rank [01]: ", message), message
    assert "KeyError: 'learning_rate'" in message, message


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
        "spec:\n  workload:\n    command: [python, -c, 'import os; print(\"address\", os.environ[\"RAY_ADDRESS\"])']\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "bigmodel.cli", "train", str(manifest), "--storage", str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    assert "address " in result.stdout and "command exited with code 0" in result.stdout, result.stdout
