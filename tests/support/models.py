"""Small models exported the way a BigModelJob exports them, for the serving tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from sklearn.datasets import load_digits

from bigmodel.api.job import BuiltinWorkload
from bigmodel.runtime.artifacts import export_model, load_model
from bigmodel.runtime.tasks import GPT, build_model_from_config, make_task

PIXEL_MAX = 16.0


def tiny_gpt_config(context_length: int = 32) -> dict[str, Any]:
    """A byte-level GPT small enough to load and generate with in a fraction of a second."""
    return {
        "task": "gpt",
        "vocab_size": 256,
        "layers": 2,
        "heads": 2,
        "embed_dim": 32,
        "context_length": context_length,
        "dropout": 0.0,
    }


def digits_pixels(count: int, offset: int = 0) -> list[list[int]]:
    """Real 8x8 digit images as the 64 pixel values (0..16) a client sends."""
    data = load_digits().data[offset : offset + count]
    return [[int(value) for value in row] for row in data]


def train_digits(storage: Path, *, seed: int = 0, epochs: int = 3, hidden_size: int = 32) -> str:
    """A digits model worth serving (most answers right), trained in-process in about a second; returns its URI."""
    torch.manual_seed(seed)
    task = make_task(BuiltinWorkload.model_validate({"task": "digits", "digits": {"hiddenSize": hidden_size}}))
    model = task.build_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(epochs):
        for batch in torch.utils.data.DataLoader(task.dataset(), batch_size=64, shuffle=True):
            optimizer.zero_grad()
            task.loss(model, batch).backward()
            optimizer.step()
    return export_model(str(storage), model, task.model_config(), task.evaluate(model))


def diverged_digits(storage: Path) -> str:
    """A digits model as a run that diverged exports it: every weight NaN. It loads like any other; returns its URI."""
    task = make_task(BuiltinWorkload.model_validate({"task": "digits", "digits": {"hiddenSize": 16}}))
    model = task.build_model()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(float("nan"))
    return export_model(str(storage), model, task.model_config(), {})


def export_decisive(storage: Path, config: dict[str, Any]) -> str:
    """An untrained model of config with large weights, exported; returns its URI.

    Larger weights than the initialisation's: a GPT's next-token choices then differ from step to step and prompt to
    prompt, so equal outputs mean something, and the random bytes exercise decoding with errors="replace".
    """
    torch.manual_seed(0)
    model = build_model_from_config(config)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, 0.5)
    return export_model(str(storage), model, config, {})


def decisive_gpt(storage: Path, context_length: int) -> GPT:
    """export_decisive's tiny GPT, loaded back as a replica loads it."""
    model, _ = load_model(export_decisive(storage, tiny_gpt_config(context_length=context_length)))
    assert isinstance(model, GPT)
    return model
