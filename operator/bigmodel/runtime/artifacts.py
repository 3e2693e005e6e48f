"""The exported model a service loads: <storage>/model/ with weights.pt and config.json (written last)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import torch

from bigmodel.runtime.storage import (
    json_writer,
    read_json,
    read_torch,
    remove_directory,
    resolve,
    staged_target,
    subdirectories,
    torch_writer,
    write_directory,
)
from bigmodel.runtime.tasks import build_model_from_config, unwrap_model

MODEL_DIR = "model"
WEIGHTS_FILE = "weights.pt"
CONFIG_FILE = "config.json"


def export_model(storage: str, model: torch.nn.Module, config: dict[str, Any], metrics: dict[str, float]) -> str:
    """Write the model's weights and architecture under storage; returns the URI load_model takes."""
    root = resolve(storage)
    document = {
        "model": config,
        "metrics": dict(metrics),
        "exported": datetime.now(timezone.utc).isoformat(),
    }
    target = write_directory(
        root,
        MODEL_DIR,
        [(WEIGHTS_FILE, torch_writer(unwrap_model(model).state_dict())), (CONFIG_FILE, json_writer(document))],
    )
    # Leftovers of an export that crashed before its rename; no other export of this run can be in flight.
    for name in subdirectories(root):
        if staged_target(name) == MODEL_DIR:
            remove_directory(root.child(name))
    return target.uri


def load_model(uri: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The exported model on the CPU in eval mode, with the architecture config it was exported with."""
    directory = resolve(uri)
    config: dict[str, Any] = read_json(directory.child(CONFIG_FILE))["model"]
    model = build_model_from_config(config)
    model.load_state_dict(read_torch(directory.child(WEIGHTS_FILE)))
    return model.eval(), config
