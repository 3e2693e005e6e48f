"""Built-in training tasks, chosen by BuiltinWorkload.task."""

from __future__ import annotations

from typing import Any

import torch

from bigmodel.api.job import BuiltinWorkload
from bigmodel.runtime.tasks.base import TrainingTask, unwrap_model
from bigmodel.runtime.tasks.causal_lm import CausalLmTask, load_base_model
from bigmodel.runtime.tasks.digits import DigitsTask, build_mlp
from bigmodel.runtime.tasks.gpt import GptTask
from bigmodel.runtime.tasks.gpt_model import GPT, build_gpt, generate

__all__ = [
    "GPT",
    "CausalLmTask",
    "DigitsTask",
    "GptTask",
    "TrainingTask",
    "build_model_from_config",
    "generate",
    "make_task",
    "unwrap_model",
]

_TASKS: dict[str, type[TrainingTask]] = {task.name: task for task in (DigitsTask, GptTask, CausalLmTask)}


def make_task(workload: BuiltinWorkload) -> TrainingTask:
    return _TASKS[workload.task](workload)


def build_model_from_config(config: dict[str, Any]) -> torch.nn.Module:
    """The architecture a task's model_config() describes, freshly initialised: for causal-lm, which fine-tunes,
    that is the pretrained base model (in float32, on the CPU)."""
    task = config.get("task")
    if task == DigitsTask.name:
        return build_mlp(int(config["hidden_size"]))
    if task == GptTask.name:
        return build_gpt(config)
    if task == CausalLmTask.name:
        return load_base_model(config["base"])
    raise ValueError(f"unknown task {task!r} in model config; expected one of {sorted(_TASKS)}")
