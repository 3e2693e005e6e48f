"""`bigmodel train` of a causal-lm job as a user runs it: a tiny Hugging Face model fine-tuned by two FSDP workers on an
embedded Ray cluster, exported as a Hugging Face directory that loads with its tokenizer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from bigmodel.runtime.artifacts import describe_model
from bigmodel.runtime.huggingface import load_causal_lm
from tests.support.hf_models import write_text_dataset, write_tiny_causal_lm

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
STEPS = 4


def test_train_fine_tunes_a_hugging_face_model_and_exports_one(tmp_path: Path) -> None:
    base = write_tiny_causal_lm(tmp_path / "base")
    manifest = tmp_path / "tiny-lm.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "bigmodel.dev/v1alpha1",
                "kind": "BigModelJob",
                "metadata": {"name": "tiny-lm"},
                "spec": {
                    "workload": {
                        "builtin": {
                            "task": "causal-lm",
                            "maxSteps": STEPS,
                            "batchSize": 2,
                            "learningRate": 0.01,
                            "causalLm": {
                                "model": str(base),
                                "dataset": str(write_text_dataset(tmp_path / "docs.jsonl")),
                                "contextLength": 16,
                            },
                        }
                    },
                    "workers": {"replicas": 2},
                    "training": {"strategy": "fsdp"},
                    "checkpoint": {"everySteps": 2, "keepLast": 1},
                },
            }
        )
    )
    storage = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "bigmodel.cli", "train", str(manifest), "--storage", str(storage), "--num-cpus", "2"],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ | {"COLUMNS": "200", "NO_COLOR": "1"},
        cwd=ROOT,
    )
    assert done.returncode == 0, f"bigmodel train failed:\n{done.stdout}\n{done.stderr}"
    assert "BigModelJob tiny-lm: Succeeded" in done.stdout, done.stdout

    exported = storage / "model"
    metadata = json.loads((exported / "bigmodel.json").read_text())
    assert metadata["model"] == {"task": "causal-lm", "base": str(base)}
    assert describe_model(str(exported)).exported == metadata["exported"]
    model, tokenizer = load_causal_lm(str(exported))
    base_model, _ = load_causal_lm(str(base))
    ids = torch.tensor([tokenizer("The fox and the dog")["input_ids"]])
    with torch.no_grad():
        assert not torch.equal(model(input_ids=ids).logits, base_model(input_ids=ids).logits), "nothing was trained"
    assert model.generate(ids, max_new_tokens=4, do_sample=False).shape == (1, ids.shape[1] + 4)
