"""The GPT task sharded with FSDP2 on real Ray Train workers: it learns what DDP learns, each worker holds half the
state, and its checkpoint resumes on another number of workers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bigmodel.api.job import BigModelJobSpec
from bigmodel.runtime.driver import TrainingResult, run_training

pytestmark = pytest.mark.e2e

GPT = {"layers": 2, "heads": 2, "embedDim": 32, "contextLength": 32, "corpusMegabytes": 0.2}
# Warm-up, cosine decay and clipping on both sides, so that the comparison covers the whole optimizer step.
TRAINING = {"warmupSteps": 2, "learningRateDecay": "cosine", "maxGradNorm": 0.5}
# Float32 on the CPU: the two strategies add the same numbers in another order, so they agree to rounding.
RELATIVE_TOLERANCE = 1e-4


def _train(
    storage: Path, *, strategy: str, workers: int, steps: int, batch_size: int, accumulate: int = 1, **checkpoint: Any
) -> TrainingResult:
    spec = BigModelJobSpec.model_validate(
        {
            "workload": {
                "builtin": {"task": "gpt", "maxSteps": steps, "batchSize": batch_size, "learningRate": 3e-3, "gpt": GPT}
            },
            "workers": {"replicas": workers},
            "training": TRAINING | {"strategy": strategy, "gradientAccumulationSteps": accumulate},
            "checkpoint": {"everySteps": 4} | checkpoint,
        },
        by_alias=True,
    )
    # Half a CPU each: three workers fit the two-CPU test cluster.
    return run_training(strategy, spec, str(storage), resources_per_worker={"CPU": 0.5})


@pytest.fixture(scope="module")
def ddp_and_fsdp(ray_cluster: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainingResult, TrainingResult]:
    root = tmp_path_factory.mktemp("strategies")
    ddp = _train(root / "ddp", strategy="ddp", workers=2, steps=8, batch_size=8)
    # The same 8 sequences per worker and step, as two micro-batches of 4 accumulated; its checkpoints saved async.
    fsdp = _train(root / "fsdp", strategy="fsdp", workers=2, steps=8, batch_size=4, accumulate=2, asyncSave=True)
    return ddp, fsdp


def test_fsdp_learns_what_ddp_learns_from_the_same_seed(ddp_and_fsdp: tuple[TrainingResult, TrainingResult]) -> None:
    ddp, fsdp = ddp_and_fsdp
    assert ddp.steps == fsdp.steps == 8
    # The held-out loss of the final weights: the training loss is a mean over steps that depend on report times.
    assert fsdp.metrics["val_loss"] == pytest.approx(ddp.metrics["val_loss"], rel=RELATIVE_TOLERANCE), (
        f"held-out loss after 8 steps: FSDP {fsdp.metrics['val_loss']} against DDP {ddp.metrics['val_loss']}"
    )
    assert ddp.metrics["val_loss"] < 5.0, "the model did not learn: a byte model starts near ln(256) = 5.55"


def test_each_fsdp_worker_holds_half_the_parameters_and_optimizer_state(
    ddp_and_fsdp: tuple[TrainingResult, TrainingResult],
) -> None:
    ddp, fsdp = ddp_and_fsdp
    whole, held = ddp.metrics["state_bytes_per_worker"], fsdp.metrics["state_bytes_per_worker"]
    assert 0.45 * whole <= held <= 0.55 * whole, f"an FSDP worker of 2 holds {held:.0f} of {whole:.0f} bytes"


def test_an_fsdp_checkpoint_of_two_workers_resumes_on_three(
    ddp_and_fsdp: tuple[TrainingResult, TrainingResult], tmp_path: Path
) -> None:
    _, fsdp = ddp_and_fsdp
    assert fsdp.checkpoint is not None and fsdp.checkpoint.step == 8
    storage = Path(fsdp.checkpoint.uri).parents[1]
    resumed = _train(storage, strategy="fsdp", workers=3, steps=12, batch_size=4, accumulate=2, asyncSave=True)
    (attempt,) = resumed.progress.attempts
    assert attempt.resumed_from_step == 8, f"the run on 3 workers began at step {attempt.resumed_from_step}"
    assert resumed.steps == 12 and resumed.checkpoint is not None and resumed.checkpoint.step == 12
    assert resumed.metrics["val_loss"] < fsdp.metrics["val_loss"], "training on 3 workers did not go on learning"
