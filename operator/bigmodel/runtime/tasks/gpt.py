"""GPT: a byte-level causal language model trained on the Python standard library's source."""

from __future__ import annotations

import math
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F

from bigmodel.api.job import GptOptions
from bigmodel.runtime.tasks.base import TrainingTask, device_of, evaluating
from bigmodel.runtime.tasks.corpus import stdlib_corpus
from bigmodel.runtime.tasks.gpt_model import GPT, build_gpt

VOCAB_SIZE = 256
BYTES_PER_MEGABYTE = 1_000_000
HELD_OUT_FRACTION = 0.05
# Evaluation reads at most this many held-out tokens, so that a large corpus does not stall training.
EVAL_TOKENS = 1 << 16


class ByteWindows(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Non-overlapping windows of a byte sequence: (inputs, the same bytes shifted by one)."""

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


class GptTask(TrainingTask):
    name = "gpt"

    @property
    def options(self) -> GptOptions:
        options = self.workload.task_options()
        assert isinstance(options, GptOptions)
        return options

    @cached_property
    def _splits(self) -> tuple[ByteWindows, ByteWindows]:
        context = self.options.context_length
        corpus = stdlib_corpus(int(self.options.corpus_megabytes * BYTES_PER_MEGABYTE))
        data = torch.frombuffer(bytearray(corpus), dtype=torch.uint8)
        held_out = max(int(len(data) * HELD_OUT_FRACTION), context + 1)
        if len(data) - held_out < context + 1:
            raise ValueError(
                f"a corpus of {len(data)} bytes is too small for a context length of {context}: "
                "raise corpusMegabytes or lower contextLength"
            )
        return ByteWindows(data[:-held_out], context), ByteWindows(data[-held_out:], context)

    def dataset(self) -> ByteWindows:
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
        held_out = self._splits[1]
        windows = min(len(held_out), max(1, EVAL_TOKENS // held_out.context_length))
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(held_out, range(windows)), batch_size=self.workload.batch_size
        )
        total, tokens = 0.0, 0
        with evaluating(model) as bare:
            device = device_of(bare)
            for inputs, targets in loader:
                logits = bare(inputs.to(device)).float()
                total += F.cross_entropy(
                    logits.view(-1, logits.shape[-1]), targets.to(device).reshape(-1), reduction="sum"
                ).item()
                tokens += targets.numel()
        mean = total / tokens
        return {"val_loss": mean, "val_perplexity": math.exp(mean)}
