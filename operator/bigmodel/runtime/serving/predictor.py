"""A loaded model behind one interface: check instances, predict a batch in one pass, describe its tensors.

The web layer (app.py) and the wire formats (protocol.py) stay the same for every task; only this module knows that
digits take 64 pixel values and a GPT takes a prompt.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import torch
import torch.nn.functional as F

from bigmodel.api.service import Batching
from bigmodel.runtime.artifacts import describe_model, load_model
from bigmodel.runtime.generation.engine import RequestRefused
from bigmodel.runtime.generation.huggingface import HuggingFaceCausalModel, HuggingFaceTokenizer
from bigmodel.runtime.generation.models import BuiltinGpt
from bigmodel.runtime.generation.tokenizers import ByteTokenizer
from bigmodel.runtime.serving.protocol import (
    BAD_REQUEST,
    MODEL_FAILED,
    InvalidInstance,
    OutputTensor,
    ProtocolError,
    TensorSpec,
    parse_instances,
    shown,
    v1_location,
)
from bigmodel.runtime.serving.text_generation import Prepared, TextGenerator, TextRequest
from bigmodel.runtime.tasks.digits import CLASSES, INPUTS
from bigmodel.runtime.tasks.gpt_model import GPT

Instance = TypeVar("Instance")
Result = TypeVar("Result")

# Pixel intensities of scikit-learn's 8x8 digits run from 0 to 16; training scaled them by this.
PIXEL_MAX = 16.0
DEFAULT_NEW_TOKENS = 32
MAX_NEW_TOKENS = 256

# The first image of the digits data set (a 0): a real instance for the sample requests shown to users.
SAMPLE_DIGIT = [0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0, 0, 4, 12, 0, 0, 8, 8, 0,
                0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0, 0, 2, 14, 5, 10, 12, 0, 0, 0, 0, 6, 13, 10, 0, 0, 0]  # fmt: skip
SAMPLE_PROMPT = "def fibonacci(n):"


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _is_number(value: Any) -> bool:
    # bool is an int in Python, but `true` is no pixel value.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _whole_number_in(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


class Predictor(ABC, Generic[Instance, Result]):
    """What a replica serves: the model on its device, and how instances and results look on the wire."""

    task: ClassVar[str]
    # Per request, so that one request cannot hold a replica for minutes; a GPT instance costs a pass per token.
    max_instances: ClassVar[int]
    input: ClassVar[TensorSpec]
    outputs: ClassVar[tuple[TensorSpec, ...]]
    # An instance a user can try, shown by `bigmodel serve`.
    sample: ClassVar[Any]

    def parse_parameters(self, parameters: Mapping[str, Any]) -> Mapping[str, Any]:
        """The v2 request parameters this model understands; it understands none unless it says so."""
        if parameters:
            raise InvalidInstance(f"unknown parameter {shown(next(iter(parameters)))}; this model takes none")
        return {}

    @abstractmethod
    def parse_instance(self, value: Any, parameters: Mapping[str, Any]) -> Instance:
        """One instance as the client sent it (JSON), checked; raises InvalidInstance naming what is wrong."""

    @abstractmethod
    def run(self, instances: Sequence[Instance]) -> list[Result]:
        """Results of checked instances, computed together."""

    @abstractmethod
    def prediction(self, result: Result) -> Any:
        """A result as one v1 prediction (JSON)."""

    @abstractmethod
    def output_tensors(self, results: Sequence[Result]) -> list[OutputTensor]:
        """Results as v2 output tensors, first dimension the instances."""

    def checked(
        self, instances: Sequence[Any], parameters: Mapping[str, Any], location: Callable[[int], str]
    ) -> list[Instance]:
        """A request's JSON instances and parameters, checked; raises ProtocolError (400) naming the first problem."""
        try:
            settings = self.parse_parameters(parameters)
        except InvalidInstance as error:
            raise ProtocolError(BAD_REQUEST, f"parameters: {error}") from error
        return parse_instances(instances, lambda value: self.parse_instance(value, settings), location)

    def predict(self, instances: list[Any]) -> list[Any]:
        """v1 predictions of a batch of JSON instances."""
        return [self.prediction(result) for result in self.run(self.checked(instances, {}, v1_location))]


@dataclass(frozen=True)
class DigitsResult:
    label: int
    probabilities: tuple[float, ...]


class DigitsPredictor(Predictor[tuple[float, ...], DigitsResult]):
    task = "digits"
    max_instances = 1024
    input = TensorSpec("input", "FP32", (-1, INPUTS))
    outputs = (TensorSpec("predictions", "INT64", (-1,)), TensorSpec("probabilities", "FP32", (-1, CLASSES)))
    sample = SAMPLE_DIGIT

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.model = model.to(device).eval()
        self.device = device

    def parse_instance(self, value: Any, parameters: Mapping[str, Any]) -> tuple[float, ...]:
        if not isinstance(value, list) or len(value) != INPUTS:
            got = f"{len(value)} values" if isinstance(value, list) else shown(value)
            raise InvalidInstance(f"must be a list of {INPUTS} pixel values (an 8x8 image, row by row), got {got}")
        for position, pixel in enumerate(value):
            # The range check also refuses NaN and infinity, which Python's JSON parser accepts.
            if not _is_number(pixel) or not 0 <= pixel <= PIXEL_MAX:
                raise InvalidInstance(f"value {position} must be a number from 0 to 16, not {shown(pixel)}")
        return tuple(float(pixel) for pixel in value)

    @torch.no_grad()
    def run(self, instances: Sequence[tuple[float, ...]]) -> list[DigitsResult]:
        features = torch.tensor(instances, dtype=torch.float32, device=self.device) / PIXEL_MAX
        probabilities = F.softmax(self.model(features).float(), dim=1).cpu()
        if not torch.isfinite(probabilities).all():
            # A run that diverged exports NaN weights, whose every answer would be label 0: an error says so.
            raise ProtocolError(
                MODEL_FAILED, "the model's output is not finite (NaN or infinity): its weights diverged"
            )
        labels = probabilities.argmax(dim=1)
        return [DigitsResult(int(label), tuple(row.tolist())) for label, row in zip(labels, probabilities, strict=True)]

    def prediction(self, result: DigitsResult) -> int:
        return result.label

    def output_tensors(self, results: Sequence[DigitsResult]) -> list[OutputTensor]:
        return [
            OutputTensor("predictions", "INT64", (len(results),), [result.label for result in results]),
            OutputTensor(
                "probabilities",
                "FP32",
                (len(results), CLASSES),
                [p for result in results for p in result.probabilities],
            ),
        ]


class TextPredictor(Predictor[Prepared, str]):
    """A generative model on the KServe protocols: greedy continuations, generated on the replica's one engine."""

    task = "gpt"
    max_instances = 64
    input = TensorSpec("text_input", "BYTES", (-1,))
    outputs = (TensorSpec("text_output", "BYTES", (-1,)),)
    sample = SAMPLE_PROMPT

    def __init__(self, generator: TextGenerator) -> None:
        self.generator = generator

    def parse_parameters(self, parameters: Mapping[str, Any]) -> Mapping[str, Any]:
        for key, value in parameters.items():
            if key != "max_new_tokens":
                raise InvalidInstance(f"unknown parameter {shown(key)}; this model takes max_new_tokens")
            self._check_new_tokens(value)
        return dict(parameters)

    @staticmethod
    def _check_new_tokens(value: Any) -> int:
        if not _whole_number_in(value, 1, MAX_NEW_TOKENS):
            raise InvalidInstance(
                f"max_new_tokens must be a whole number from 1 to {MAX_NEW_TOKENS}, not {shown(value)}"
            )
        return int(value)

    def parse_instance(self, value: Any, parameters: Mapping[str, Any]) -> Prepared:
        max_new_tokens = parameters.get("max_new_tokens", DEFAULT_NEW_TOKENS)
        if isinstance(value, dict):
            unknown = sorted(set(value) - {"prompt", "max_new_tokens"})
            if unknown:
                raise InvalidInstance(f"unknown field {shown(unknown[0])}; expected prompt and max_new_tokens")
            if "prompt" not in value:
                raise InvalidInstance("prompt is missing")
            max_new_tokens = self._check_new_tokens(value.get("max_new_tokens", max_new_tokens))
            value = value["prompt"]
        if not isinstance(value, str):
            raise InvalidInstance(
                f'must be a prompt string or {{"prompt": ..., "max_new_tokens": ...}}, not {shown(value)}'
            )
        if not value:
            raise InvalidInstance("the prompt must not be empty")
        try:
            # Greedy, as the KServe endpoints have always answered.
            return self.generator.prepare(TextRequest(value, max_new_tokens))
        except RequestRefused as error:
            raise InvalidInstance(str(error)) from error

    def run(self, instances: Sequence[Prepared]) -> list[str]:
        return self.generator.complete_blocking(instances)

    async def run_async(self, instances: Sequence[Prepared]) -> list[str]:
        """run() for a server's event loop: each instance joins the engine's batch on its own."""
        completions = await asyncio.gather(*(self.generator.complete(instance) for instance in instances))
        return [completion.text for completion in completions]

    def prediction(self, result: str) -> str:
        return result

    def output_tensors(self, results: Sequence[str]) -> list[OutputTensor]:
        return [OutputTensor("text_output", "BYTES", (len(results),), list(results))]


class CausalLmPredictor(TextPredictor):
    """A Hugging Face causal LM: the same endpoints; only the tokens differ."""

    task = "causal-lm"
    sample = "Once upon a time"


_PREDICTORS: dict[str, type[Predictor[Any, Any]]] = {
    predictor.task: predictor for predictor in (DigitsPredictor, TextPredictor, CausalLmPredictor)
}
# Generation bounds of a replica when the caller names none (tests, benches): the service spec's defaults.
_BATCHING = Batching()


def build_predictor(
    model: torch.nn.Module,
    config: Mapping[str, Any],
    device: torch.device | None = None,
    *,
    max_sequences: int = _BATCHING.max_batch_size,
    max_cached_tokens: int = _BATCHING.max_cached_tokens,
) -> Predictor[Any, Any]:
    """The predictor of an exported built-in model, as runtime.artifacts.load_model returns it."""
    device = device or default_device()
    cls = predictor_class(config.get("task"))
    if cls is DigitsPredictor:
        return DigitsPredictor(model, device)
    if not isinstance(model, GPT):
        raise TypeError(f"a gpt model config built a {type(model).__name__}, not a GPT")
    generator = TextGenerator(
        BuiltinGpt(model, device), ByteTokenizer(), max_sequences=max_sequences, max_cached_tokens=max_cached_tokens
    )
    return TextPredictor(generator)


def predictor_class(task: Any) -> type[Predictor[Any, Any]]:
    if task not in _PREDICTORS:
        raise ValueError(f"cannot serve a model of task {task!r}; expected one of {sorted(_PREDICTORS)}")
    return _PREDICTORS[task]


def load_predictor(
    uri: str,
    device: torch.device | None = None,
    *,
    max_sequences: int = _BATCHING.max_batch_size,
    max_cached_tokens: int = _BATCHING.max_cached_tokens,
) -> Predictor[Any, Any]:
    """The predictor of the model directory at uri: one a job exported, or a Hugging Face causal LM."""
    device = device or default_device()
    if describe_model(uri).task == CausalLmPredictor.task:
        # Only here: transformers is imported by replicas that serve a Hugging Face model, not by every one.
        from bigmodel.runtime.huggingface import load_causal_lm

        model, tokenizer = load_causal_lm(uri, device)
        generator = TextGenerator(
            HuggingFaceCausalModel(model, tokenizer, device),
            HuggingFaceTokenizer(tokenizer),
            max_sequences=max_sequences,
            max_cached_tokens=max_cached_tokens,
        )
        return CausalLmPredictor(generator)
    model, config = load_model(uri)
    return build_predictor(model, config, device, max_sequences=max_sequences, max_cached_tokens=max_cached_tokens)
