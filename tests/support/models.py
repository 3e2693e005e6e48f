"""Small trained models exported the way a BigModelJob exports them, for the serving tests and benchmarks."""

from __future__ import annotations

from pathlib import Path

import torch
from sklearn.datasets import load_digits

from bigmodel.runtime.artifacts import export_model
from bigmodel.runtime.tasks.digits import build_mlp

PIXEL_MAX = 16.0


def digits_pixels(count: int, offset: int = 0) -> list[list[int]]:
    """Real 8x8 digit images as the 64 pixel values (0..16) a client sends."""
    data = load_digits().data[offset : offset + count]
    return [[int(value) for value in row] for row in data]


def train_digits(storage: Path, *, seed: int = 0, steps: int = 200, hidden_size: int = 64) -> str:
    """A digits MLP trained full-batch for `steps` Adam steps and exported under storage; returns the model URI."""
    torch.manual_seed(seed)
    bunch = load_digits()
    features = torch.tensor(bunch.data, dtype=torch.float32) / PIXEL_MAX
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    model = build_mlp(hidden_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(features), labels)
        loss.backward()
        optimizer.step()
    accuracy = float((model(features).argmax(dim=1) == labels).float().mean())
    config = {"task": "digits", "hidden_size": hidden_size}
    return export_model(str(storage), model, config, {"loss": loss.item(), "accuracy": accuracy})
