"""Digits: an MLP classifier on scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download)."""

from __future__ import annotations

from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from bigmodel.api.job import DigitsOptions
from bigmodel.runtime.tasks.base import TrainingTask, device_of, evaluating

INPUTS = 64
CLASSES = 10
# Independent of the workload's seed, so that every run is scored on the same held-out images.
SPLIT_SEED = 0
HELD_OUT_FRACTION = 0.2


def build_mlp(hidden_size: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(
        torch.nn.Linear(INPUTS, hidden_size),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden_size, hidden_size),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden_size, CLASSES),
    )


class DigitsTask(TrainingTask):
    name = "digits"

    @property
    def options(self) -> DigitsOptions:
        options = self.workload.task_options()
        assert isinstance(options, DigitsOptions)
        return options

    @cached_property
    def _splits(self) -> tuple[torch.utils.data.TensorDataset, torch.utils.data.TensorDataset]:
        bunch = load_digits()
        # Pixel intensities run from 0 to 16.
        features = torch.tensor(bunch.data, dtype=torch.float32) / 16.0
        labels = torch.tensor(bunch.target, dtype=torch.int64)
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SPLIT_SEED))
        held_out = int(len(labels) * HELD_OUT_FRACTION)
        train, test = order[held_out:], order[:held_out]
        return (
            torch.utils.data.TensorDataset(features[train], labels[train]),
            torch.utils.data.TensorDataset(features[test], labels[test]),
        )

    def dataset(self) -> torch.utils.data.TensorDataset:
        return self._splits[0]

    def build_model(self) -> torch.nn.Module:
        return build_mlp(self.options.hidden_size)

    def loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        features, labels = batch
        return F.cross_entropy(model(features).float(), labels)

    def tokens_in(self, batch: Any) -> int:
        return 0

    def model_config(self) -> dict[str, Any]:
        return {"task": self.name, "hidden_size": self.options.hidden_size}

    def flops_per_token(self) -> float:
        return 0.0

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        with evaluating(model) as bare:
            features, labels = (tensor.to(device_of(bare)) for tensor in self._splits[1].tensors)
            logits = bare(features).float()
        return {
            "val_loss": F.cross_entropy(logits, labels).item(),
            "val_accuracy": (logits.argmax(dim=1) == labels).float().mean().item(),
        }
