"""causal-lm: a pretrained Hugging Face causal language model, fine-tuned on a text dataset."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from bigmodel.api.job import CausalLmOptions
from bigmodel.runtime import huggingface
from bigmodel.runtime.tasks.base import TrainingTask, device_of, evaluating
from bigmodel.runtime.tasks.text_dataset import read_documents, tokenize_documents
from bigmodel.runtime.tasks.windows import TokenWindows, held_out_metrics, held_out_tokens

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def load_base_model(uri: str) -> PreTrainedModel:
    """The pretrained model on the CPU in float32, the precision the optimizer keeps: bf16 comes from autocast or
    FSDP's mixed precision, as for the other tasks. The same weights every time, whatever the seed."""
    model, _ = huggingface.load_causal_lm(uri, "cpu", torch.float32)
    return model


@contextmanager
def _about(field: str) -> Iterator[None]:
    """A ValueError raised within names the option it comes from, as the driver reports it under the workload."""
    try:
        yield
    except ValueError as error:
        raise ValueError(f"causalLm.{field}: {error}") from error


class CausalLmTask(TrainingTask):
    name = "causal-lm"

    @property
    def options(self) -> CausalLmOptions:
        options = self.workload.task_options()
        assert isinstance(options, CausalLmOptions)
        return options

    @cached_property
    def _splits(self) -> tuple[TokenWindows, TokenWindows]:
        context = self.options.context_length
        with _about("model"):
            tokenizer = huggingface.load_tokenizer(self.options.model)
            positions = getattr(huggingface.load_config(self.options.model), "max_position_embeddings", None)
        if positions is not None and context > positions:
            raise ValueError(f"causalLm.contextLength {context} is longer than the model's {positions} positions")
        with _about("dataset"):
            tokens = tokenize_documents(tokenizer, read_documents(self.options.dataset))
            held_out = held_out_tokens(len(tokens), context)
            if len(tokens) - held_out < context + 1:
                raise ValueError(
                    f"its {len(tokens)} tokens are too few for a contextLength of {context} and a held-out share: "
                    "give more text or lower contextLength"
                )
        return TokenWindows(tokens[:-held_out], context), TokenWindows(tokens[-held_out:], context)

    def dataset(self) -> TokenWindows:
        return self._splits[0]

    def build_model(self) -> PreTrainedModel:
        with _about("model"):
            return load_base_model(self.options.model)

    def blocks(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        return huggingface.decoder_layers(model)

    def loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        inputs, targets = batch
        logits = model(input_ids=inputs, use_cache=False).logits
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))

    def tokens_in(self, batch: Any) -> int:
        return int(batch[0].numel())

    def model_config(self) -> dict[str, Any]:
        return {"task": self.name, "base": self.options.model}

    def flops_per_token(self) -> float:
        """6N for the weights that multiply (input embeddings are a lookup; an output head tied to them multiplies)
        plus 12·layers·width·context for attention, as for gpt."""
        model = huggingface.meta_model(self.options.model)
        weights = model.num_parameters(exclude_embeddings=True)
        head, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
        if head is not None and head.weight is embeddings.weight:
            weights += head.weight.numel()
        config = model.config.get_text_config()
        return float(6 * weights + 12 * config.num_hidden_layers * config.hidden_size * self.options.context_length)

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        with evaluating(model) as bare:
            return held_out_metrics(
                lambda inputs: bare(input_ids=inputs, use_cache=False).logits,
                self._splits[1],
                self.workload.batch_size,
                device_of(bare),
            )
