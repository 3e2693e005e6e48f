"""Language-model data: a token sequence cut into non-overlapping training windows, and the held-out loss on them."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

HELD_OUT_FRACTION = 0.05
# Evaluation reads at most this many held-out tokens, so that a large corpus does not stall training.
EVAL_TOKENS = 1 << 16


class TokenWindows(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Non-overlapping windows of a token sequence: (inputs, the same tokens shifted by one)."""

    def __init__(self, data: torch.Tensor, context_length: int) -> None:
        self.data = data
        self.context_length = context_length

    def __len__(self) -> int:
        return (len(self.data) - 1) // self.context_length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        start = index * self.context_length
        window = self.data[start : start + self.context_length + 1].long()
        return window[:-1], window[1:]


def held_out_tokens(total: int, context_length: int) -> int:
    """How many of a sequence's last tokens are held out: a share of it, and at least one window."""
    return max(int(total * HELD_OUT_FRACTION), context_length + 1)


def held_out_metrics(
    logits_of: Callable[[torch.Tensor], torch.Tensor], held_out: TokenWindows, batch_size: int, device: torch.device
) -> dict[str, float]:
    """Mean next-token loss and perplexity over (up to EVAL_TOKENS of) the held-out windows; the caller sets the model
    to eval mode and turns autograd off."""
    windows = min(len(held_out), max(1, EVAL_TOKENS // held_out.context_length))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(held_out, range(windows)), batch_size=batch_size)
    total, tokens = 0.0, 0
    for inputs, targets in loader:
        logits = logits_of(inputs.to(device)).float()
        total += F.cross_entropy(
            logits.view(-1, logits.shape[-1]), targets.to(device).reshape(-1), reduction="sum"
        ).item()
        tokens += targets.numel()
    mean = total / tokens
    return {"val_loss": mean, "val_perplexity": math.exp(mean)}
