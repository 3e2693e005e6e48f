"""Choosing the next token from logits: greedy at temperature 0, else sampled with nucleus (top-p) filtering."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0
    top_p: float = 1.0
    # The same seed, prompt and settings give the same tokens, whatever else the batch holds.
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def generator(self, device: torch.device) -> torch.Generator | None:
        if self.greedy:
            return None
        generator = torch.Generator(device=device)
        if self.seed is None:
            generator.seed()
        else:
            generator.manual_seed(self.seed)
        return generator


def sample(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> int:
    """The next token of one row's logits (vocab,)."""
    logits = logits.float()
    if sampling.greedy or generator is None:
        return int(logits.argmax())
    probabilities = F.softmax(logits / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_probabilities, order = probabilities.sort(descending=True)
        # The smallest set of most likely tokens whose mass reaches top_p: a token stays if the mass before it is short.
        before = sorted_probabilities.cumsum(0) - sorted_probabilities
        sorted_probabilities[before >= sampling.top_p] = 0.0
        probabilities = torch.zeros_like(probabilities).scatter_(0, order, sorted_probabilities)
    return int(torch.multinomial(probabilities, 1, generator=generator))
