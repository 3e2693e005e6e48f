"""Activation checkpointing and torch.compile per block: the same model to the optimizer and to checkpoints.

Both options change how a step is computed, never what it computes or what the parameters are called, so a checkpoint
or an exported model does not depend on them.
"""

from __future__ import annotations

from typing import Any

import torch

from bigmodel.runtime.sharding import prepare_blocks
from bigmodel.runtime.tasks.gpt_model import build_gpt

CONFIG = {"vocab_size": 256, "layers": 1, "heads": 2, "embed_dim": 16, "context_length": 16, "dropout": 0.0}


def _step(**options: Any) -> tuple[float, dict[str, torch.Tensor]]:
    """The loss and gradients of one batch through a freshly seeded model prepared with options."""
    torch.manual_seed(0)
    model = build_gpt(CONFIG)
    prepare_blocks(model, model.blocks, **options)
    tokens = torch.randint(0, 256, (2, 17), generator=torch.Generator().manual_seed(1))
    loss = torch.nn.functional.cross_entropy(model(tokens[:, :-1]).reshape(-1, 256), tokens[:, 1:].reshape(-1))
    loss.backward()
    assert all(parameter.grad is not None for parameter in model.parameters())
    return loss.item(), {name: parameter.grad for name, parameter in model.named_parameters()}  # type: ignore[misc]


def test_activation_checkpointing_recomputes_the_same_gradients_under_the_same_names() -> None:
    plain_loss, plain = _step(activation_checkpointing=False, compile=False)
    loss, gradients = _step(activation_checkpointing=True, compile=False)
    assert loss == plain_loss
    assert list(gradients) == list(plain)
    for name, gradient in gradients.items():
        assert torch.equal(gradient, plain[name]), name


def test_compiled_blocks_compute_the_same_step_under_the_same_names() -> None:
    plain_loss, plain = _step(activation_checkpointing=False, compile=False)
    loss, gradients = _step(activation_checkpointing=True, compile=True)
    assert list(gradients) == list(plain)
    # Inductor fuses and reorders float arithmetic: equal to rounding, not bit for bit.
    assert abs(loss - plain_loss) < 1e-5
    for name, gradient in gradients.items():
        torch.testing.assert_close(gradient, plain[name], rtol=1e-4, atol=1e-6, msg=name)
