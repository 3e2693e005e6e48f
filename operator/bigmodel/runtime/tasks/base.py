"""The interface the train driver runs every built-in task through."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch.nn.parallel import DistributedDataParallel

from bigmodel.api.job import BuiltinWorkload


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model inside a DistributedDataParallel wrapper (Ray Train's prepare_model adds one)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The bare model in eval mode without autograd; the train loop gets its mode back afterwards."""
    bare = unwrap_model(model)
    was_training = bare.training
    bare.eval()
    try:
        with torch.no_grad():
            yield bare
    finally:
        bare.train(was_training)


class TrainingTask(ABC):
    """A dataset, a model and its loss, built offline and deterministically from a BuiltinWorkload."""

    name: ClassVar[str]

    def __init__(self, workload: BuiltinWorkload) -> None:
        self.workload = workload

    @abstractmethod
    def dataset(self) -> torch.utils.data.Dataset[Any]:
        """The training split, map-style; its items batch with default_collate."""

    @abstractmethod
    def build_model(self) -> torch.nn.Module:
        """A freshly initialised model (a fine-tuning task's pretrained one), the same for the same torch.manual_seed."""

    def blocks(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        """The model's repeated blocks, each its own FSDP unit and activation-checkpointing region; none by default."""
        return []

    @abstractmethod
    def loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        """The mean training loss of a batch already on the model's device; model may be DDP-wrapped."""

    def batch_size_of(self, batch: Any) -> int:
        return int(batch[0].shape[0])

    @abstractmethod
    def tokens_in(self, batch: Any) -> int:
        """Tokens in the batch, 0 for tasks without tokens."""

    @abstractmethod
    def model_config(self) -> dict[str, Any]:
        """A JSON-able description from which build_model_from_config rebuilds the architecture."""

    @abstractmethod
    def flops_per_token(self) -> float:
        """Training FLOPs per token (forward and backward), 0 for tasks without tokens."""

    @abstractmethod
    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Metrics on a held-out split, computed on the model's device; the model's train/eval mode is kept."""
