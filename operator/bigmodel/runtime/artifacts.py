"""The exported model a service loads, <storage>/model/, in one of two forms:

- digits and gpt: weights.pt and config.json ({"model": task config, "metrics", "exported"}, written last);
- causal-lm: a Hugging Face directory (config.json, *.safetensors, tokenizer files) that transformers loads as it is,
  with that same document as bigmodel.json, written last.

describe_model says which a directory holds, of these and of Hugging Face directories from elsewhere.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from bigmodel.runtime import huggingface
from bigmodel.runtime.storage import (
    Location,
    exists,
    files_in,
    json_writer,
    read_bytes,
    read_json,
    read_torch,
    remove_directory,
    resolve,
    staged_target,
    subdirectories,
    torch_writer,
    write_directory,
)
from bigmodel.runtime.tasks import CausalLmTask, build_model_from_config, unwrap_model

MODEL_DIR = "model"
WEIGHTS_FILE = "weights.pt"
CONFIG_FILE = "config.json"
# Beside a Hugging Face config.json, whose name it cannot take.
METADATA_FILE = "bigmodel.json"


class ModelFileMissing(ValueError):
    """A directory without a file every model of its form has, such as a run's model not exported (yet)."""

    def __init__(self, uri: str, file: str) -> None:
        super().__init__(f"no {file} in {uri}")
        self.file = file


@dataclass(frozen=True)
class ModelDescription:
    task: str
    """The built-in task that made it (digits, gpt, causal-lm); causal-lm for any Hugging Face causal LM."""
    exported: str
    """When it was exported, or, for a Hugging Face directory from elsewhere, a digest of its config and weight files:
    it changes when the model does."""


def export_model(storage: str, model: torch.nn.Module, config: dict[str, Any], metrics: dict[str, float]) -> str:
    """Write the model under storage in its task's form (see the module); returns the URI load_model takes."""
    root = resolve(storage)
    document = {
        "model": config,
        "metrics": dict(metrics),
        "exported": datetime.now(timezone.utc).isoformat(),
    }
    bare = unwrap_model(model)
    if config.get("task") == CausalLmTask.name:
        # transformers writes local files only: they are made here first, then copied into the run's storage.
        with tempfile.TemporaryDirectory(prefix="bigmodel-export-") as scratch:
            files = huggingface.directory_files(bare, config["base"], Path(scratch))  # type: ignore[arg-type]
            target = write_directory(root, MODEL_DIR, [*files, (METADATA_FILE, json_writer(document))])
    else:
        files = [(WEIGHTS_FILE, torch_writer(bare.state_dict())), (CONFIG_FILE, json_writer(document))]
        target = write_directory(root, MODEL_DIR, files)
    # Leftovers of an export that crashed before its rename; no other export of this run can be in flight.
    for name in subdirectories(root):
        if staged_target(name) == MODEL_DIR:
            remove_directory(root.child(name))
    return target.uri


def load_model(uri: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The exported model on the CPU in eval mode, with the task config it was exported with.

    A Hugging Face directory loads in the dtype its config names, with the config {"task": "causal-lm", "base": ...};
    its tokenizer comes from huggingface.load_causal_lm, which serving calls instead.
    """
    directory = resolve(uri)
    if huggingface.is_huggingface_dir(directory):
        causal_lm, _ = huggingface.load_causal_lm(directory)
        metadata = directory.child(METADATA_FILE)
        exported_with = read_json(metadata)["model"] if exists(metadata) else {"task": CausalLmTask.name, "base": uri}
        return causal_lm, exported_with
    config: dict[str, Any] = read_json(directory.child(CONFIG_FILE))["model"]
    model = build_model_from_config(config)
    model.load_state_dict(read_torch(directory.child(WEIGHTS_FILE)))
    return model.eval(), config


def describe_model(uri: str) -> ModelDescription:
    """What the model directory holds, from its small files alone; every problem is a ValueError in one line:
    ModelFileMissing for a file that is not there, huggingface.HuggingFaceModelError for a Hugging Face directory
    that is not a complete causal LM."""
    directory = resolve(uri)
    if not exists(directory.child(CONFIG_FILE)):
        raise ModelFileMissing(uri, CONFIG_FILE)
    if huggingface.is_huggingface_dir(directory):
        huggingface.check_causal_lm_dir(directory)
        metadata = directory.child(METADATA_FILE)
        if exists(metadata):
            document = read_json(metadata)
            return ModelDescription(str(document["model"]["task"]), str(document["exported"]))
        return ModelDescription(CausalLmTask.name, _digest(directory))
    if not exists(directory.child(WEIGHTS_FILE)):
        raise ModelFileMissing(uri, WEIGHTS_FILE)
    document = read_json(directory.child(CONFIG_FILE))
    return ModelDescription(str(document.get("model", {}).get("task")), str(document.get("exported", "")))


def _digest(directory: Location) -> str:
    digest = hashlib.sha256(read_bytes(directory.child(CONFIG_FILE)))
    for info in sorted(files_in(directory), key=lambda info: info.base_name):
        if info.base_name.endswith(huggingface.WEIGHTS_SUFFIX):
            digest.update(f"{info.base_name} {info.size} {info.mtime_ns}\n".encode())
    return f"sha256:{digest.hexdigest()[:16]}"
