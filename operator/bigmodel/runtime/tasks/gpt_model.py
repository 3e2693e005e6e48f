"""A GPT-2 style causal transformer over bytes: pre-LN blocks, learned positions, weight-tied output head.

forward() is the training pass over whole windows; forward_cached() is the serving pass that reuses the keys and values
of earlier tokens (a KV cache) and lets rows of different lengths share a batch, left-padded, with a key mask.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from bigmodel.runtime.tasks.base import device_of

# One attention layer's cached keys and values, each (batch, heads, tokens, head width).
KeyValue = tuple[torch.Tensor, torch.Tensor]


class KeyValueStore(Protocol):
    """Where a cached pass keeps keys and values (the serving engine's batch cache)."""

    def extend(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> KeyValue:
        """Appends a layer's new keys and values; returns all of that layer's, old and new."""
        ...


class CausalSelfAttention(nn.Module):
    def __init__(self, embed_dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if embed_dim % heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be a multiple of heads ({heads})")
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim)
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.residual_dropout = nn.Dropout(dropout)

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, length, width = x.shape
        q, k, v = (
            part.view(batch, length, self.heads, width // self.heads).transpose(1, 2)
            for part in self.qkv(x).split(width, dim=2)
        )
        return q, k, v

    def _merged(self, attended: torch.Tensor) -> torch.Tensor:
        batch, _, length, _ = attended.shape
        return self.residual_dropout(self.proj(attended.transpose(1, 2).reshape(batch, length, -1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(x)
        attended = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        return self._merged(attended)

    def forward_cached(
        self, x: torch.Tensor, layer: int, past: KeyValueStore | None, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, KeyValue]:
        """Attention of x's tokens over past's and their own; returns the output and the keys and values so far.

        mask (batch, 1, new, past + new), True where a query may attend, is None for one unpadded row with no past,
        which takes exactly forward()'s causal path."""
        q, k, v = self._heads(x)
        if past is not None:
            k, v = past.extend(layer, k, v)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
        return self._merged(attended), (k, v)


class FeedForward(nn.Module):
    def __init__(self, embed_dim: int, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Linear(embed_dim, 4 * embed_dim)
        self.proj = nn.Linear(4 * embed_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, embed_dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(embed_dim)
        self.attention = CausalSelfAttention(embed_dim, heads, dropout)
        self.feed_forward_norm = nn.LayerNorm(embed_dim)
        self.feed_forward = FeedForward(embed_dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x))
        return x + self.feed_forward(self.feed_forward_norm(x))

    def forward_cached(
        self, x: torch.Tensor, layer: int, past: KeyValueStore | None, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, KeyValue]:
        attended, present = self.attention.forward_cached(self.attention_norm(x), layer, past, mask)
        x = x + attended
        return x + self.feed_forward(self.feed_forward_norm(x)), present


class GPT(nn.Module):
    def __init__(
        self, *, vocab_size: int, layers: int, heads: int, embed_dim: int, context_length: int, dropout: float
    ) -> None:
        super().__init__()
        self.context_length = context_length
        self.token_embedding = nn.Embedding(vocab_size, embed_dim)
        self.position_embedding = nn.Embedding(context_length, embed_dim)
        self.embedding_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(embed_dim, heads, dropout) for _ in range(layers))
        self.final_norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, vocab_size, bias=False)
        self.head.weight = self.token_embedding.weight
        self.apply(_init_weights)
        # GPT-2's scaling: each block adds two residual contributions, so shrink them to keep the stream's variance flat.
        for block in self.blocks:
            for projection in (block.attention.proj, block.feed_forward.proj):
                nn.init.normal_(projection.weight, mean=0.0, std=0.02 / math.sqrt(2 * layers))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Next-token logits, shape (batch, length, vocab), for tokens of shape (batch, length)."""
        length = tokens.shape[1]
        if length > self.context_length:
            raise ValueError(f"sequence of {length} tokens is longer than the context length {self.context_length}")
        positions = torch.arange(length, device=tokens.device)
        x = self.embedding_dropout(self.token_embedding(tokens) + self.position_embedding(positions))
        for block in self.blocks:
            x = block(x)
        logits: torch.Tensor = self.head(self.final_norm(x))
        return logits

    def forward_cached(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor | None,
        past: KeyValueStore | None,
    ) -> tuple[torch.Tensor, list[KeyValue]]:
        """Next-token logits of each row's last token, shape (batch, vocab), and every block's keys and values.

        tokens and positions are (batch, new); positions must stay below context_length, since a window that slides
        moves every position and so invalidates the cache (the caller then recomputes the window with no past)."""
        x = self.token_embedding(tokens) + self.position_embedding(positions)
        present: list[KeyValue] = []
        for index, block in enumerate(self.blocks):
            x, kv = block.forward_cached(x, index, past, mask)
            present.append(kv)
        # Only the last position's logits are needed: the head is the largest matrix of a small model.
        logits: torch.Tensor = self.head(self.final_norm(x[:, -1]))
        return logits, present

    def num_parameters(self, *, include_position_embedding: bool = True) -> int:
        """Distinct parameters (the tied head counts once); works on the meta device."""
        total = sum(parameter.numel() for parameter in self.parameters())
        return total if include_position_embedding else total - self.position_embedding.weight.numel()


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def build_gpt(config: dict[str, Any]) -> GPT:
    return GPT(
        vocab_size=int(config["vocab_size"]),
        layers=int(config["layers"]),
        heads=int(config["heads"]),
        embed_dim=int(config["embed_dim"]),
        context_length=int(config["context_length"]),
        dropout=float(config["dropout"]),
    )


@torch.no_grad()
def generate(
    model: GPT,
    prompt: bytes,
    max_new_tokens: int,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> bytes:
    """The bytes that follow prompt: greedy at temperature 0, else sampled; only the last context_length bytes count."""
    if not prompt:
        raise ValueError("the prompt must hold at least one byte")
    if temperature < 0:
        raise ValueError(f"temperature must be 0 or more, not {temperature}")
    tokens = torch.tensor(list(prompt), dtype=torch.int64, device=device_of(model)).unsqueeze(0)
    for _ in range(max_new_tokens):
        logits = model(tokens[:, -model.context_length :])[0, -1].float()
        if temperature == 0:
            next_token = logits.argmax().view(1, 1)
        else:
            probabilities = F.softmax(logits / temperature, dim=-1)
            next_token = torch.multinomial(probabilities, 1, generator=generator).view(1, 1)
        tokens = torch.cat([tokens, next_token], dim=1)
    return bytes(tokens[0, len(prompt) :].tolist())
