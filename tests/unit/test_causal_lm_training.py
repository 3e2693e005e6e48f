"""causal-lm through the real built-in train loop on two gloo ranks (no Ray): sharded with FSDP2 by its decoder
layers, checkpointed, and exported from the whole model gathered to rank 0 as a Hugging Face directory.

About 6 s a case, most of it each rank importing Ray Train and transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bigmodel.api.job import BuiltinWorkload, TrainingSpec
from bigmodel.runtime.checkpoints import CheckpointStore
from bigmodel.runtime.huggingface import load_causal_lm
from bigmodel.runtime.tasks import make_task
from bigmodel.runtime.train_loop import LoopSettings
from tests.support.hf_models import write_text_dataset, write_tiny_causal_lm
from tests.support.loop_ranks import builtin_loop_on_rank
from tests.support.torch_ranks import run_ranks

STEPS = 4


def test_two_fsdp_ranks_fine_tune_and_export_a_model_that_loads(tmp_path: Path) -> None:
    # Llama here; GPT-2, whose output head is tied to its input embeddings, goes through the same export on Ray in
    # tests/e2e/test_llm_on_ray.py.
    workload = BuiltinWorkload.model_validate(
        {
            "task": "causal-lm",
            "maxSteps": STEPS,
            "batchSize": 2,
            "learningRate": 1e-2,
            "causalLm": {
                "model": str(write_tiny_causal_lm(tmp_path / "base")),  # type: ignore[arg-type]
                "dataset": str(write_text_dataset(tmp_path / "docs.jsonl")),
                "contextLength": 16,
            },
        }
    )
    storage = tmp_path / "run"
    settings = LoopSettings(
        workload=workload,
        training=TrainingSpec(strategy="fsdp"),
        storage=str(storage),
        replicas=2,
        keep_last=1,
        every_steps=2,
        every_epochs=None,
    )
    run_ranks(builtin_loop_on_rank, 2, settings.model_dump(mode="json"))

    assert [info.step for info in CheckpointStore(str(storage)).list()] == [STEPS]
    exported = storage / "model"
    metadata = json.loads((exported / "bigmodel.json").read_text())
    assert metadata["model"] == {"task": "causal-lm", "base": workload.causal_lm.model}  # type: ignore[union-attr]
    task = make_task(workload)
    model, _ = load_causal_lm(str(exported))
    trained = task.evaluate(model)
    assert trained["val_loss"] == pytest.approx(metadata["metrics"]["val_loss"], rel=1e-5)
    assert trained["val_loss"] < task.evaluate(task.build_model())["val_loss"] - 0.3, "the run did not learn"
    assert model.dtype == torch.float32
