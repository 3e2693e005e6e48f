"""GPT: a byte-level causal language model trained on the Python standard library's source."""

from __future__ import annotations

from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F

from bigmodel.api.job import GptOptions
from bigmodel.runtime.tasks.base import TrainingTask, device_of, evaluating
from bigmodel.runtime.tasks.corpus import stdlib_corpus
from bigmodel.runtime.tasks.gpt_model import GPT, build_gpt
from bigmodel.runtime.tasks.windows import TokenWindows, held_out_metrics, held_out_tokens

VOCAB_SIZE = 256
BYTES_PER_MEGABYTE = 1_000_000


class GptTask(TrainingTask):
    name = "gpt"

    @property
    def options(self) -> GptOptions:
        options = self.workload.task_options()
        assert isinstance(options, GptOptions)
        return options

    @cached_property
    def _splits(self) -> tuple[TokenWindows, TokenWindows]:
        context = self.options.context_length
        corpus = stdlib_corpus(int(self.options.corpus_megabytes * BYTES_PER_MEGABYTE))
        data = torch.frombuffer(bytearray(corpus), dtype=torch.uint8)
        held_out = held_out_tokens(len(data), context)
        if len(data) - held_out < context + 1:
            raise ValueError(
                f"a corpus of {len(data)} bytes is too small for a context length of {context}: "
                "raise corpusMegabytes or lower contextLength"
            )
        return TokenWindows(data[:-held_out], context), TokenWindows(data[-held_out:], context)

    def dataset(self) -> TokenWindows:
        return self._splits[0]

    def build_model(self) -> GPT:
        return build_gpt(self.model_config())

    def blocks(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        assert isinstance(model, GPT)
        return list(model.blocks)

    def loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        inputs, targets = batch
        logits = model(inputs)
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))

    def tokens_in(self, batch: Any) -> int:
        return int(batch[0].numel())

    def model_config(self) -> dict[str, Any]:
        options = self.options
        return {
            "task": self.name,
            "vocab_size": VOCAB_SIZE,
            "layers": options.layers,
            "heads": options.heads,
            "embed_dim": options.embed_dim,
            "context_length": options.context_length,
            "dropout": options.dropout,
        }

    def flops_per_token(self) -> float:
        """6N for the weights (positions are a lookup) plus 12·layers·width·context for attention (PaLM, nanoGPT)."""
        with torch.device("meta"):
            weights = self.build_model().num_parameters(include_position_embedding=False)
        options = self.options
        return float(6 * weights + 12 * options.layers * options.embed_dim * options.context_length)

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        with evaluating(model) as bare:
            return held_out_metrics(bare, self._splits[1], self.workload.batch_size, device_of(bare))
