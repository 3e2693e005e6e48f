"""A Hugging Face causal LM and its tokenizer behind the engine's interfaces, through transformers' cache API.

The engine's batch cache becomes a DynamicCache for each pass (left padding masked by attention_mask, positions given
per row), so any architecture whose layers all keep a plain full-attention cache is served. transformers is imported
by the functions that need it: the operator's own process never loads it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from bigmodel.runtime.generation.batch_cache import BatchCache
from bigmodel.runtime.generation.models import Cache, CausalModel
from bigmodel.runtime.generation.tokenizers import ConversationRefused, Tokenizer


class UnsupportedArchitecture(ValueError):
    """A model whose cache the engine cannot batch (sliding-window or recurrent layers); str() says which."""


def _max_positions(config: Any) -> int:
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise UnsupportedArchitecture(f"{type(config).__name__} names no maximum length (max_position_embeddings)")


class HuggingFaceCausalModel(CausalModel):
    slides = False

    def __init__(self, model: Any, tokenizer: Any, device: torch.device) -> None:
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        layers = DynamicCache(config=model.config).layers
        odd = sorted({type(layer).__name__ for layer in layers if type(layer) is not DynamicLayer})
        if odd:
            raise UnsupportedArchitecture(
                f"{model.config.model_type} keeps {', '.join(odd)} caches; only full-attention layers are served"
            )
        self.model = model.to(device).eval()
        self.device = device
        self.max_positions = _max_positions(model.config)
        ends = {tokenizer.eos_token_id, *_as_list(getattr(model.generation_config, "eos_token_id", None))}
        self.end_tokens = frozenset(token for token in ends if isinstance(token, int))

    def _run(
        self, tokens: torch.Tensor, positions: torch.Tensor, key_mask: torch.Tensor | None, past: Cache | None
    ) -> tuple[torch.Tensor, Cache]:
        from transformers import DynamicCache

        # DynamicCache appends by concatenation, as in transformers' own generate(): a copy of the cache a step.
        cache = DynamicCache(ddp_cache_data=past) if past is not None else DynamicCache(config=self.model.config)
        output = self.model(
            input_ids=tokens,
            position_ids=positions,
            attention_mask=None if key_mask is None else key_mask.long(),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return output.logits[:, -1], [(layer.keys, layer.values) for layer in output.cache.layers]

    @torch.no_grad()
    def prefill(self, tokens: torch.Tensor) -> tuple[torch.Tensor, Cache]:
        positions = torch.arange(tokens.shape[1], device=tokens.device)[None, :]
        return self._run(tokens, positions, None, None)

    @torch.no_grad()
    def decode(
        self, tokens: torch.Tensor, positions: torch.Tensor, key_mask: torch.Tensor, cache: BatchCache
    ) -> torch.Tensor:
        logits, layers = self._run(tokens, positions, key_mask, cache.in_use())
        cache.replace(layers)
        return logits


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


class HuggingFaceTokenizer(Tokenizer):
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        # Special tokens (a BOS) as the model was trained with them, as vLLM and transformers' pipelines add them.
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def decode(self, tokens: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(tokens), skip_special_tokens=True))

    def chat_prompt(self, messages: Sequence[Mapping[str, str]]) -> str | None:
        if not getattr(self.tokenizer, "chat_template", None):
            return None
        from jinja2 import TemplateError

        try:
            return str(self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True))
        except TemplateError as error:
            # Templates refuse what their model was not trained on (a system message, two user turns in a row).
            raise ConversationRefused(f"the model's chat template refuses this conversation: {error}") from error
