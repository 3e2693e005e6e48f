"""What the generation engine needs of a causal language model, and the built-in byte-level GPT behind it.

A model takes a batch of rows, each a few new tokens after the keys and values of its earlier ones (left-padded to a
common length, with a mask saying which keys are real), and returns each row's next-token logits and the keys and
values with the new tokens appended. The engine owns the cache; models only compute.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import torch

from bigmodel.runtime.tasks.gpt_model import GPT, KeyValue

if TYPE_CHECKING:
    from bigmodel.runtime.generation.batch_cache import BatchCache

# Per layer, the keys and values of every row of a batch.
Cache = list[KeyValue]


class CausalModel(ABC):
    """A decoder the engine drives, on its device."""

    device: torch.device
    # Positions the model has; how a longer sequence is treated is slides.
    max_positions: int
    # True: past max_positions the model sees the last max_positions tokens (the built-in GPT, as generate() does);
    # False: a prompt and its new tokens must fit in max_positions.
    slides: bool
    # Tokens that end a sequence (a Hugging Face model's end of sequence); the byte-level GPT has none.
    end_tokens: frozenset[int]

    @abstractmethod
    def prefill(self, tokens: torch.Tensor) -> tuple[torch.Tensor, Cache]:
        """One row's prompt (1, length) from position 0: its last token's logits (1, vocab) and its keys and values."""

    @abstractmethod
    def decode(
        self, tokens: torch.Tensor, positions: torch.Tensor, key_mask: torch.Tensor, cache: BatchCache
    ) -> torch.Tensor:
        """Logits (rows, vocab) of tokens (rows, 1) at positions (rows, 1) after the cache's keys; the tokens' keys
        and values are appended to cache (which has room reserved), to be committed by the caller.

        key_mask (rows, width + 1) is True for real keys, False for the left padding."""


def attention_mask(key_mask: torch.Tensor, new: int) -> torch.Tensor:
    """(batch, 1, new, keys) for scaled_dot_product_attention: a query sees real keys up to its own position."""
    keys = key_mask.shape[1]
    causal = torch.ones(new, keys, dtype=torch.bool, device=key_mask.device).tril(keys - new)
    return (key_mask[:, None, None, :] & causal).contiguous()


class BuiltinGpt(CausalModel):
    """The byte-level GPT of the gpt task. Past its context it slides, so a cache holds at most context tokens."""

    slides = True
    end_tokens = frozenset()

    def __init__(self, model: GPT, device: torch.device) -> None:
        self.model = model.to(device).eval()
        self.device = device
        self.max_positions = model.context_length

    @torch.no_grad()
    def prefill(self, tokens: torch.Tensor) -> tuple[torch.Tensor, Cache]:
        positions = torch.arange(tokens.shape[1], device=tokens.device)[None, :]
        return self.model.forward_cached(tokens, positions, None, None)

    @torch.no_grad()
    def decode(
        self, tokens: torch.Tensor, positions: torch.Tensor, key_mask: torch.Tensor, cache: BatchCache
    ) -> torch.Tensor:
        logits, _ = self.model.forward_cached(tokens, positions, attention_mask(key_mask, tokens.shape[1]), cache)
        return logits
